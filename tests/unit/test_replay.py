import json

from models.data import movielens
from streams.replay import ColumnMapping, read_log, window


def test_movielens_ships_and_maps_to_valid_events():
    import schemas

    items = list(movielens.items())
    assert len(items) == 1682 and items[0]["title"] == "Toy Story (1995)"
    events = movielens.interactions()
    assert len(events) == 100_000 and len({e["user_id"] for e in events}) == 943
    times = [e["event_time"] for e in events]
    assert times == sorted(times)
    for e in events[:50] + items[:50]:
        schemas.validate("interaction" if "user_id" in e else "item", e)


def test_csv_with_a_column_mapping_and_time_window(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("uid,mid,ts,stars\n1,10,100,4\n2,11,50,\n1,12,300,5\n")
    mapping = ColumnMapping.parse("user_id=uid,item_id=mid,event_time=ts,time_format=epoch,value=stars,type=kind")
    events = read_log(path, mapping)
    assert events[0] == {"user_id": "1", "item_id": "10", "type": "view", "event_time": "1970-01-01T00:01:40Z",
                         "value": 4.0}
    kept = window(events, since="1970-01-01T00:00:51Z", until="1970-01-01T00:05:00Z")
    assert [e["item_id"] for e in kept] == ["10"]
    assert [e["item_id"] for e in window(events, None, None)] == ["11", "10", "12"]


def test_jsonl_source(tmp_path):
    path = tmp_path / "log.jsonl"
    rows = [{"user_id": "a", "item_id": "x", "type": "buy", "event_time": "2026-01-01T00:00:00Z"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert read_log(path, ColumnMapping()) == rows
