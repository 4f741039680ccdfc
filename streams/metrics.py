"""Counters, gauges and a latency reservoir, rendered as Prometheus text for GET /metrics."""
from __future__ import annotations

import random
from collections import defaultdict

import numpy as np

QUANTILES = (0.5, 0.9, 0.99)


class Metrics:
    def __init__(self, reservoir: int = 10_000):
        self.counters: dict[tuple[str, tuple], float] = defaultdict(float)
        self.gauges: dict[str, float] = {}
        self.last_offsets: dict[tuple[str, int], int] = {}
        self._latencies: list[float] = []
        self._latency_count = 0
        self._latency_sum = 0.0
        self._reservoir = reservoir

    def inc(self, name: str, n: float = 1, **labels: str) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] += n

    def get(self, name: str, **labels: str) -> float:
        """Sum over every label set that contains the given labels."""
        want = set(labels.items())
        return sum(v for (n, lab), v in self.counters.items() if n == name and want <= set(lab))

    def gauge(self, name: str, value: float) -> None:
        self.gauges[name] = value

    def observe_offset(self, topic: str, partition: int, offset: int) -> None:
        self.last_offsets[(topic, partition)] = offset

    def observe_latency(self, seconds: float) -> None:
        """Reservoir sampling keeps the quantiles honest over long runs in bounded memory."""
        self._latency_count += 1
        self._latency_sum += seconds
        if len(self._latencies) < self._reservoir:
            self._latencies.append(seconds)
        else:
            slot = random.randrange(self._latency_count)
            if slot < self._reservoir:
                self._latencies[slot] = seconds

    def latency_quantiles(self) -> dict[float, float]:
        if not self._latencies:
            return {}
        values = np.quantile(np.asarray(self._latencies), QUANTILES)
        return dict(zip(QUANTILES, map(float, values)))

    def render(self, lag: dict[str, int]) -> str:
        lines = []
        seen_types = set()
        for (name, labels), value in sorted(self.counters.items()):
            metric = f"mmsr_{name}"
            if metric not in seen_types:
                lines.append(f"# TYPE {metric} counter")
                seen_types.add(metric)
            lines.append(f"{metric}{_labels(labels)} {value:g}")
        for name, value in sorted(self.gauges.items()):
            lines += [f"# TYPE mmsr_{name} gauge", f"mmsr_{name} {value:g}"]
        lines.append("# TYPE mmsr_consumer_lag gauge")
        for tp, value in sorted(lag.items()):
            topic, partition = tp.rsplit("/", 1)
            lines.append(f'mmsr_consumer_lag{{topic="{topic}",partition="{partition}"}} {value}')
        lines.append("# TYPE mmsr_event_to_recommendation_seconds summary")
        for q, v in self.latency_quantiles().items():
            lines.append(f'mmsr_event_to_recommendation_seconds{{quantile="{q}"}} {v:.6f}')
        lines.append(f"mmsr_event_to_recommendation_seconds_count {self._latency_count}")
        lines.append(f"mmsr_event_to_recommendation_seconds_sum {self._latency_sum:.6f}")
        return "\n".join(lines) + "\n"


def _labels(labels: tuple) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{str(v).replace(chr(34), "")}"' for k, v in labels)
    return "{" + inner + "}"
