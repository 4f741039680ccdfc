import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.metrics import Metrics


def samples(text: bytes) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def test_exposition_is_standard_prometheus_text_with_labels_lag_histogram_and_process_metrics():
    m = Metrics()
    m.inc("dead_letters_total", reason="NotUTF8", topic="interactions")
    m.inc("dead_letters_total", reason="NoKey", topic="interactions")
    m.inc("events_applied_total", 5)
    for ms in range(1, 101):
        m.observe_latency(ms / 1000)
    got = samples(m.render({"interactions/0": 7}))
    assert got[("mmsr_dead_letters_total", (("reason", "NotUTF8"), ("topic", "interactions")))] == 1
    assert got[("mmsr_events_applied_total", ())] == 5
    assert got[("mmsr_consumer_lag", (("partition", "0"), ("topic", "interactions")))] == 7
    assert got[("mmsr_event_to_recommendation_seconds_count", ())] == 100
    assert got[("mmsr_event_to_recommendation_seconds_bucket", (("le", "0.05"),))] == 50
    assert any(name == "process_cpu_seconds_total" for name, _ in got)
    assert m.get("dead_letters_total") == 2 and m.get("dead_letters_total", reason="NoKey") == 1


def test_lag_of_a_partition_no_longer_held_is_dropped_and_unknown_names_fail():
    m = Metrics()
    m.render({"interactions/0": 7, "interactions/1": 3})
    got = samples(m.render({"interactions/1": 2}))
    assert ("mmsr_consumer_lag", (("partition", "0"), ("topic", "interactions"))) not in got
    assert got[("mmsr_consumer_lag", (("partition", "1"), ("topic", "interactions")))] == 2
    with pytest.raises(KeyError):
        m.inc("no_such_metric_total")
