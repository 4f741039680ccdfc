"""The CLI starts fast: importing it loads neither torch, Faust nor the evaluation."""
import subprocess
import textwrap
import sys

import pytest
from click.testing import CliRunner

from streams.cli import main
from streams.settings import Settings


def test_importing_the_cli_loads_no_model_or_stream_code():
    code = ("import sys, streams.cli; heavy = [m for m in ('torch', 'faust', 'models.evaluation.paper', 'transformers') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_setting_is_a_worker_flag_with_its_default():
    help_text = CliRunner().invoke(main, ["worker", "--help"], terminal_width=200).output
    for name, field in Settings.model_fields.items():
        if name == "sasl_password":  # environment only: a flag would put it in the process list
            assert "--sasl-password" not in help_text
            continue
        assert f"--{name.replace('_', '-')}" in help_text, name


GLIBC = sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver())


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc settings")
def test_the_worker_keeps_freed_memory_on_the_heap():
    """A 1 MB block is mapped on its own with glibc's defaults (and its pages zeroed by the kernel
    each time), and served from the heap once ``keep_freed_memory`` ran; 0 keeps the defaults.
    Each case in a fresh process: glibc's threshold moves as a process frees mapped blocks."""
    code = textwrap.dedent("""
        import ctypes, sys
        from streams.tuning import keep_freed_memory

        class Info(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in
                        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = Info
        took = keep_freed_memory(int(sys.argv[1]))
        mapped = libc.mallinfo2().hblks
        block = bytearray(1 << 20)
        print(took, libc.mallinfo2().hblks - mapped)
    """)
    runs = {mb: subprocess.run([sys.executable, "-c", code, str(mb)], capture_output=True, text=True,
                               check=True).stdout.split() for mb in (0, 256)}
    assert runs[0] == ["False", "1"]
    assert runs[256] == ["True", "0"]
