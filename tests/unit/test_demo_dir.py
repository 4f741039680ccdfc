"""The demo starts from an empty directory each time, and never empties one it did not make."""
import pytest

from streams.harness.demo import DEMO_MARK, fresh_demo_dir


def test_a_directory_an_earlier_demo_left_is_emptied(tmp_path):
    demo = fresh_demo_dir(tmp_path / "demo")
    (demo / "kafka").mkdir()
    (demo / "kafka" / "segment").write_text("old")
    again = fresh_demo_dir(tmp_path / "demo")
    assert sorted(p.name for p in again.iterdir()) == [DEMO_MARK]


def test_a_new_or_empty_directory_is_used_and_marked(tmp_path):
    (tmp_path / "empty").mkdir()
    for name in ("empty", "new"):
        assert (fresh_demo_dir(tmp_path / name) / DEMO_MARK).exists()


def test_a_directory_the_demo_did_not_make_is_refused_and_kept(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious").write_text("keep")
    with pytest.raises(SystemExit, match="not made by the demo"):
        fresh_demo_dir(tmp_path / "data")
    assert (tmp_path / "data" / "precious").read_text() == "keep"


def test_the_default_directory_of_a_demo_before_the_mark_is_emptied(tmp_path):
    old = tmp_path / ".mmsr-demo"
    (old / "state").mkdir(parents=True)
    assert sorted(p.name for p in fresh_demo_dir(old).iterdir()) == [DEMO_MARK]
