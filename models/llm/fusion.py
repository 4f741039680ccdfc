"""The fused score: a calibrated logistic regression over the re-ranker's and the candidate stage's signals.

Features, per (user, candidate): the LLM's logit(Yes) - logit(No), the sequential model's score,
the co-occurrence score and log(1 + popularity). Standardised, then fitted by Newton's method
(IRLS, a small ridge) on a validation split later in time than the LLM's training data; the
weights are per standard deviation, so their sizes compare, and their 95% intervals come from a
bootstrap over users (rows of one user are not independent). A user reads the weights to see how
much the LLM adds beyond the collaborative signals; a weight whose interval spans 0 adds nothing
measurable. Saved as ``mmsr-fusion.json`` inside the adapter directory, with the adapter's version.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

FUSION_FILE = "mmsr-fusion.json"
FEATURES = ("llm_margin", "sequential", "cooccurrence", "log_popularity")


def llm_margin(p_yes: float) -> float:
    """logit(Yes) - logit(No) back from p(Yes) = sigmoid(margin) (clipped where fp32 saturates)."""
    p = min(max(p_yes, 1e-7), 1 - 1e-7)
    return math.log(p) - math.log1p(-p)


@dataclass(frozen=True)
class FusedScorer:
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...] = field(metadata={"help": "weights per standard deviation of each feature"})
    intercept: float
    ci95: tuple[tuple[float, float], ...] = ()
    fitted_on: dict = field(default_factory=dict)

    def logits(self, rows: np.ndarray) -> np.ndarray:
        """Fused logits of (n, features) rows; a missing (non-finite) value counts as the mean."""
        rows = np.asarray(rows, dtype=np.float64)
        z = (rows - np.array(self.mean)) / np.array(self.scale)
        z[~np.isfinite(z)] = 0.0
        return z @ np.array(self.coef) + self.intercept

    def score_rows(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        return self.logits(np.array([[row.get(f, math.nan) for f in self.features] for row in rows]))

    def rerank(self, recommender, request, p_yes: list[float], features: list[Mapping[str, float]]) -> list[float]:
        """Fused probabilities of one request's candidates: the LLM's margins with the candidate
        stage's ``features`` (co-occurrence, log popularity) and the sequential score of the
        model the re-ranker's collaborative tokens are paired with (missing without one)."""
        items = [c.item_id for c in request.candidates]
        collab = recommender.collab
        sequential = collab.sequential.item_scores(list(request.history), items) if collab is not None \
            else [math.nan] * len(items)
        rows = [{**f, "llm_margin": llm_margin(p), "sequential": s} for p, s, f in zip(p_yes, sequential, features)]
        return (1 / (1 + np.exp(-self.score_rows(rows)))).tolist()

    def report(self) -> dict:
        return {name: {"weight": round(w, 4), "ci95": [round(lo, 4), round(hi, 4)] if self.ci95 else None}
                for name, w, (lo, hi) in zip(self.features, self.coef, self.ci95 or [(math.nan, math.nan)] * len(self.coef))}

    def save_pretrained(self, directory: Path | str) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / FUSION_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def from_pretrained(cls, directory: Path | str) -> "FusedScorer | None":
        path = Path(directory) / FUSION_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(**{**data, **{k: tuple(tuple(x) if isinstance(x, list) else x for x in data[k])
                                 for k in ("features", "mean", "scale", "coef", "ci95")}})


def _newton(z: np.ndarray, y: np.ndarray, ridge: float, iterations: int = 50) -> np.ndarray:
    """Ridge logistic regression on (n, f) standardised rows plus an intercept (not penalised)."""
    x = np.hstack([z, np.ones((len(z), 1))])
    w = np.zeros(x.shape[1])
    penalty = np.full(x.shape[1], ridge)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(x @ w, -30, 30)))
        gradient = x.T @ (y - p) - penalty * w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w += step
        if np.abs(step).max() < 1e-8:
            break
    return w


def fit(rows: np.ndarray, labels: np.ndarray, groups: Sequence | None = None, features: Sequence[str] = FEATURES,
        ridge: float = 1.0, bootstrap: int = 200, seed: int = 0, info: dict | None = None) -> FusedScorer:
    """Fit on (n, features) rows; intervals by resampling ``groups`` (users) with replacement."""
    rows, labels = np.asarray(rows, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    finite = np.where(np.isfinite(rows), rows, np.nan)
    mean = np.nan_to_num(np.nanmean(finite, axis=0))
    scale = np.nan_to_num(np.nanstd(finite, axis=0), nan=1.0)
    scale[scale < 1e-9] = 1.0
    z = np.nan_to_num((finite - mean) / scale)
    w = _newton(z, labels, ridge)
    intervals: list[tuple[float, float]] = []
    if groups is not None and bootstrap:
        groups = np.asarray(groups)
        members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(bootstrap):
            take = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
            draws.append(_newton(z[take], labels[take], ridge)[:-1])
        low, high = np.percentile(np.array(draws), [2.5, 97.5], axis=0)
        intervals = [(float(a), float(b)) for a, b in zip(low, high)]
    return FusedScorer(tuple(features), tuple(map(float, mean)), tuple(map(float, scale)), tuple(map(float, w[:-1])),
                       float(w[-1]), tuple(intervals), {"rows": int(len(rows)), "positives": int(labels.sum()),
                                                        "ridge": ridge, "bootstrap": bootstrap, **(info or {})})
