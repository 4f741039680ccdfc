from streams.metrics import Metrics


def test_render_is_prometheus_text_with_labels_lag_and_quantiles():
    m = Metrics()
    m.inc("dead_letters_total", reason="NotUTF8", topic="interactions")
    m.inc("dead_letters_total", reason="NoKey", topic="interactions")
    m.inc("events_applied_total", 5)
    for ms in range(1, 101):
        m.observe_latency(ms / 1000)
    text = m.render({"interactions/0": 7})
    assert 'mmsr_dead_letters_total{reason="NotUTF8",topic="interactions"} 1' in text
    assert "mmsr_events_applied_total 5" in text
    assert 'mmsr_consumer_lag{topic="interactions",partition="0"} 7' in text
    assert "mmsr_event_to_recommendation_seconds_count 100" in text
    q = m.latency_quantiles()
    assert 0.049 <= q[0.5] <= 0.052 and 0.098 <= q[0.99] <= 0.1
    assert m.get("dead_letters_total") == 2 and m.get("dead_letters_total", reason="NoKey") == 1


def test_reservoir_stays_bounded():
    m = Metrics(reservoir=50)
    for i in range(1000):
        m.observe_latency(i)
    assert len(m._latencies) == 50 and m._latency_count == 1000
