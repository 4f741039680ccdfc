"""Metrics over the protocol's users with bootstrap intervals, the markdown table and the chart."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from models.config import KS
from models.evaluation.ranking import auc, bootstrap_interval, user_metrics

from models.evaluation.paper.data import UserCase

def evaluate_scores(cases: list[UserCase], scores: dict[str, dict[str, float]], seeds, bootstrap: int) -> dict:
    """Metrics averaged over seeds, with 95% bootstrap intervals over users."""
    per_user = []  # rows: user x metric (averaged over seeds)
    pos_neg = []  # per user: list over seeds of (positive score, negative scores)
    for case in cases:
        s = scores[case.user_id]
        lists = [(s[case.test_item], [s[n] for n in case.test_negatives[seed]]) for seed in seeds]
        pos_neg.append(lists)
        rows = [user_metrics(p, n, KS) for p, n in lists]
        per_user.append({k: float(np.mean([r[k] for r in rows])) for k in rows[0]})
    names = list(per_user[0])
    matrix = np.array([[row[k] for k in names] for row in per_user])

    # one row per user: every seed's positive then its negatives (the same shape for every user)
    values = np.array([[v for p, n in lists for v in [p, *n]] for lists in pos_neg])
    labels = np.array([[v for p, n in lists for v in [True] + [False] * len(n)] for lists in pos_neg])

    def global_auc(users: np.ndarray) -> float:
        return auc(values[users].ravel(), labels[users].ravel())

    out = {"auc": {"value": global_auc(np.arange(len(cases))),
                   "ci95": bootstrap_interval(np.arange(len(cases)), global_auc, samples=bootstrap)}}
    for j, name in enumerate(names):
        column = matrix[:, j]
        out[name] = {"value": float(column.mean()), "ci95": bootstrap_interval(column, np.mean, samples=bootstrap)}
    return out


ORDER = ("random", "popularity", "sasrec", "sasrec-pre-validation", "zero-shot", "tallrec-style", "direct-summary",
         "no-captions", "mllm-msr", "collab", "tallrec-collab", "fused")


def markdown_table(report: dict) -> str:
    columns = ["auc", "user_auc"] + [f"{m}@{k}" for k in KS for m in ("hr", "ndcg", "mrr")]
    names = [n for n in ORDER if n in report["metrics"]] + [n for n in report["metrics"] if n not in ORDER]
    lines = [f"Users: {len(report['users'])}; seeds: {report['config']['seeds']}; model: {report['config']['model']}; "
             f"values are means over seeds with 95% bootstrap intervals over users.", "",
             "| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name in names:
        m = report["metrics"][name]
        cells = [f"{m[c]['value']:.3f} [{m[c]['ci95'][0]:.3f}, {m[c]['ci95'][1]:.3f}]" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ORDER if n in report["metrics"]]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.5))
    for ax, metric in zip(axes, ("auc", "hr@5", "ndcg@5")):
        values = [report["metrics"][n][metric]["value"] for n in names]
        low = [v - report["metrics"][n][metric]["ci95"][0] for n, v in zip(names, values)]
        high = [report["metrics"][n][metric]["ci95"][1] - v for n, v in zip(names, values)]
        ax.bar(range(len(names)), values, yerr=[low, high], capsize=3,
               color=["#999999" if n in ("random", "popularity", "sasrec", "sasrec-pre-validation") else "#3b7dd8"
                      for n in names])
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right")
        ax.set_title(metric.upper())
        ax.set_ylim(0, 1)
    fig.suptitle(f"{report.get('dataset', 'movielens-100k')}, {len(report['users'])} users, 1 positive : {report['config']['negatives']} "
                 f"negatives, seeds {report['config']['seeds']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
