"""The Faust stack is pinned where its internals are patched, and a worker on another one stops
with one line (streams/kafka/compat.py)."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tomllib

import pytest

from streams.kafka import compat
from tests.conftest import ROOT


def test_the_installed_stack_is_the_tested_one_with_every_patch_target_in_place():
    assert compat.differences() == []


def test_pyproject_and_the_constraints_pin_the_versions_the_check_expects():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    constraints = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines()
                       if "==" in line and not line.startswith("#"))
    for dist, version in compat.TESTED_VERSIONS.items():
        assert f"{dist}=={version}" in dependencies, dist  # exact: a patched library never floats
        assert constraints[dist] == version, dist
    for dist in ("confluent-kafka", "rocksdict", "torch", "transformers", "peft"):  # compatible ranges
        [spec] = [d for d in dependencies if re.match(rf"{dist}[<>=]", d)]
        assert ">=" in spec and "<" in spec, spec
        assert dist in constraints


def test_another_version_stops_the_worker_with_one_line_naming_it(monkeypatch):
    real = compat.importlib.metadata.version
    monkeypatch.setattr(compat.importlib.metadata, "version",
                        lambda dist: "0.99.0" if dist == "aiokafka" else real(dist))
    with pytest.raises(compat.UntestedFaustStack) as error:
        compat.check()
    message = str(error.value)
    assert "\n" not in message and message.startswith("aiokafka 0.99.0 is installed")
    assert "0.14.0" in message and "MMSR_ALLOW_UNTESTED_FAUST" in message


def test_a_missing_patch_target_stops_the_worker_naming_the_target(monkeypatch):
    from faust.tables.recovery import Recovery

    monkeypatch.delattr(Recovery, "_resume_streams")
    with pytest.raises(compat.UntestedFaustStack, match=r"faust\.tables\.recovery\.Recovery\._resume_streams, "
                                                        r"which a correctness patch replaces, does not exist"):
        compat.check()


def test_allowed_it_warns_about_each_difference_and_goes_on(monkeypatch, caplog):
    monkeypatch.setattr(compat.importlib.metadata, "version", lambda dist: "9.9.9")
    with caplog.at_level(logging.WARNING, logger="streams.kafka.compat"):
        found = compat.check(allow_untested=True)
    assert len(found) == len(compat.TESTED_VERSIONS)
    assert sum("MMSR_ALLOW_UNTESTED_FAUST" in r.message for r in caplog.records) == len(found)


HOOK = '''
import importlib.metadata
_version = importlib.metadata.version
importlib.metadata.version = lambda dist: "0.16.0" if dist == "faust-streaming" else _version(dist)
'''


def test_mmsr_worker_on_an_untested_faust_exits_1_with_one_line_before_touching_the_broker(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(HOOK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
           "MMSR_BOOTSTRAP_SERVERS": "127.0.0.1:9",  # nothing listens: the check comes first
           "MMSR_DATA_DIR": str(tmp_path / "data")}
    out = subprocess.run([sys.executable, "-m", "streams.cli", "worker"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr[-2000:]
    assert "faust-streaming 0.16.0 is installed" in lines[0] and "0.15.3" in lines[0]


def test_every_patch_names_what_it_replaces_and_a_test_that_exists():
    import inspect

    from streams.kafka.patches import batching, correctness, throughput

    patches = [obj for module in (correctness, throughput, batching) for name, obj in vars(module).items()
               if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__
               and "Shown by" in " ".join((obj.__doc__ or "").split())]
    assert len(patches) == 13
    for patch in patches:
        doc = " ".join(patch.__doc__.split())
        assert re.search(r"(Replaces|Stands in for|Overrides)\b[^.]*``", doc), patch.__name__  # the upstream part
        for path, test in re.findall(r"``(tests/[\w/]+\.py)::(\w+)``", doc):
            assert f"def {test}(" in (ROOT / path).read_text(), (patch.__name__, path, test)
        assert re.search(r"``tests/[\w/]+\.py", doc), patch.__name__
