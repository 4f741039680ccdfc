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


def test_the_demo_trains_the_sequential_source_the_worker_loads(tmp_path):
    """The demo's lists blend the sequential source as eval-stream measures it: the directory it
    trains is what the worker's retrieval_model loads; no epochs, no model."""
    import json

    from models.candidates.sequential import SequentialRetriever, read_version
    from streams.harness.demo import train_sequential

    events = [{"user_id": f"u{u}", "item_id": f"i{(u + t) % 7}", "event_time": f"2021-03-0{t + 1}T00:00:00Z"}
              for u in range(4) for t in range(6)]
    lines: list[str] = []
    path = train_sequential(events, tmp_path / "sequential", 1, lines.append)
    assert path == str(tmp_path / "sequential") and read_version(path)
    saved = json.loads((tmp_path / "sequential" / "config.json").read_text())
    assert (saved["loss"], saved["whole_sequences"], saved["epochs"]) == ("ce", True, 1)
    retriever = SequentialRetriever.from_pretrained(path)
    assert retriever.metadata["data"] == {"events": 24, "until": "2021-03-06T00:00:00Z"}
    assert sorted(retriever.vocabulary) == [f"i{n}" for n in range(7)]
    assert retriever.ease is not None and sorted(retriever.ease.vocabulary) == sorted(retriever.vocabulary)
    assert any("sequential model" in line for line in lines)
    assert train_sequential(events, tmp_path / "none", 0, lines.append) == "none"
    assert not (tmp_path / "none").exists()
