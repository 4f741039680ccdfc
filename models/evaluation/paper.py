"""The MLLM-MSR protocol end to end: data, summaries, LoRA training, scoring, baselines, report.

Protocol (per selected user, items in time order): the last item is the test positive; the
history before it is cut to its most recent ``window`` items and summarized recurrently in
blocks of ``block`` items, giving summaries S_1..S_T. The test prompt uses S_T. Training pairs
come from the history only: S_t with the first item of block t+1 as the positive and one
sampled item the user never touched as the negative (1:1); ``next_items`` > 1 takes more of block
t+1's items as positives after S_t, each with its own negative (more pairs, no more summaries).
Test candidates: the positive and 20 sampled never-touched items per seed. Every model scores the same candidates.
Training negatives: a share (``hard_negatives``, default half) from the candidate stage's top N
(co-occurrence over everything before the validation items, the user's items excluded), the
rest uniform: the re-ranker sees the candidate stage's items in the stream.

Validation (the fused score): the last history item, with S_{T-1} (which has not read it) and
``validation_negatives`` negatives of the same two kinds. It is later in time than every
training positive and never one itself. The collaborative variants' SASRec ("sasrec-pre-validation",
also scored alone) and the co-occurrence and popularity features are trained on everything
before the validation items, so no feature has seen a validation positive.

Models in one run: random, popularity and SASRec (trained on every user's history, test items
excluded), the zero-shot base LLM, the full pipeline (LoRA on recurrent summaries with item
captions), a TALLRec-style model (same LM and LoRA, recent titles instead of a summary), and
the ablations "direct summary" (one summary of the same items, not recurrent) and "no item
captions" (summaries and candidates without captions). Then CoLLM's collaborative tokens on top
of the MLLM-MSR and TALLRec adapters ("collab", "tallrec-collab": stage 2 trains the projector
with the stage-1 LoRA frozen), and "fused": a logistic regression of one variant's LLM margin,
the SASRec score, the co-occurrence score and log popularity, fitted on the validation pairs.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.llm import pipeline
from models.candidates.sequences import sequences_of
from models.config import COLLAB_VARIANTS, KS, LLM_VARIANTS, PRESETS, STAGE_ONE, EvalConfig  # noqa: F401
from models.evaluation.ranking import auc, bootstrap_interval, user_metrics


# -- data ---------------------------------------------------------------------------------------
@dataclass
class Dataset:
    items: dict[str, dict]  # item_id -> {"title", "categories", "description"}
    sequences: dict[str, list[str]]  # user_id -> item ids in time order

    @classmethod
    def movielens(cls, dataset: str = "ml-100k") -> "Dataset":
        from models.data import movielens

        items = {i["item_id"]: {"title": i["title"], "categories": i["categories"]} for i in movielens.items(dataset)}
        return cls(items, sequences_of(movielens.interactions(dataset)))

    @classmethod
    def from_events(cls, items_file: Path, interactions_file: Path) -> "Dataset":
        """JSON-lines files of item and interaction events (the topics' schemas), e.g. a replay log."""
        import schemas

        items = {}
        for line in Path(items_file).read_text().splitlines():
            if line.strip():
                item = schemas.validate("item", json.loads(line))
                items[item["item_id"]] = {"title": item["title"], "categories": item.get("categories", []),
                                          "description": item.get("description")}
        events = [schemas.validate("interaction", json.loads(line))
                  for line in Path(interactions_file).read_text().splitlines() if line.strip()]
        events.sort(key=lambda e: schemas.parse_time(e["event_time"]))
        return cls(items, sequences_of(e for e in events if e["item_id"] in items))


def dataset_of(catalog: list[dict], events: list[dict]) -> Dataset:
    """A dataset from item events and time-ordered interaction events (``mmsr train --until``'s cut log)."""
    items = {i["item_id"]: {"title": i.get("title") or i["item_id"], "categories": i.get("categories") or [],
                            "description": i.get("description")} for i in catalog if i.get("op") != "delete"}
    return Dataset(items, sequences_of(e for e in events if e["item_id"] in items))


@dataclass
class UserCase:
    user_id: str
    history: list[str]  # everything before the test item
    window: list[str]  # the summarized part of the history (whole blocks)
    test_item: str
    test_negatives: dict[int, list[str]]  # seed -> negatives
    train_pairs: list[tuple[int, str, str]]  # (summary index t, positive, negative): S_t then block t+1's first item
    validation: tuple[int, str, list[str]] | None = None  # (summary index, the last history item, negatives)

    def before(self, item_id: str) -> list[str]:
        """The history before one of its items (what the user had done when they took it)."""
        return self.history[:self.history.index(item_id)]

    def candidates(self) -> list[str]:
        """The positive and every seed's negatives, each once: one scoring request per user."""
        out = [self.test_item]
        for negatives in self.test_negatives.values():
            out += [n for n in negatives if n not in out]
        return out


def pre_validation(data: Dataset) -> dict[str, list[str]]:
    """Every user's items before their validation and test items: what collaborative features learn from."""
    return {u: seq[:-2] for u, seq in data.sequences.items()}


def candidate_stage(data: Dataset):
    """The co-occurrence source over the pre-validation sequences (``models.evaluation.prequential``'s replay state)."""
    from models.candidates.cooccurrence import CooccurrenceConfig
    from models.evaluation.prequential import SourceState

    state = SourceState(CooccurrenceConfig())
    for user, seq in sorted(pre_validation(data).items()):
        for item in seq:
            state.apply_item(user, item)
    return state


def build_cases(data: Dataset, config: EvalConfig, stage=None) -> list[UserCase]:
    """The users' cases; ``stage`` is ``candidate_stage(data)`` if the caller has built it already."""
    rng = random.Random(config.seed)
    need = config.block + 1  # at least one summarized block before the test item
    eligible = sorted((u for u, seq in data.sequences.items() if len(seq) >= need), key=_natural)
    chosen = sorted(rng.sample(eligible, min(config.users or len(eligible), len(eligible))), key=_natural)
    catalog = sorted(data.items, key=_natural)
    if stage is None and config.hard_negatives > 0:
        stage = candidate_stage(data)
    hard_negatives = stage is not None and config.hard_negatives > 0
    cases = []
    for user in chosen:
        seq = data.sequences[user]
        history, test_item = seq[:-1], seq[-1]
        window = history[-config.window:]
        window = window[len(window) % config.block:]
        touched = set(seq)
        negatives = {s: sample_negatives(random.Random(f"{s}-{user}"), catalog, touched, config.negatives)
                     for s in config.seeds}
        hard = [i for i in stage.cooccurrence(user, config.hard_pool + len(seq)) if i not in touched][:config.hard_pool] \
            if hard_negatives else []

        def negative(count: int) -> list[str]:
            """``count`` negatives, each from the hard pool with probability ``hard_negatives``."""
            out: list[str] = []
            for _ in range(count):
                pool = [i for i in hard if i not in out]
                if pool and rng.random() < config.hard_negatives:
                    out.append(rng.choice(pool))
                else:
                    out += sample_negatives(rng, catalog, touched | set(out), 1)
            return out

        blocks = len(window) // config.block
        validation = (blocks - 2, window[-1], negative(config.validation_negatives)) if blocks >= 2 else None
        pairs = []
        for t in range(blocks - 1):
            start = (t + 1) * config.block
            for positive in window[start:start + min(config.next_items, config.block)]:
                if validation is None or positive != validation[1]:
                    pairs.append((t, positive, negative(1)[0]))
        cases.append(UserCase(user, history, window, test_item, negatives, pairs, validation))
    return cases


def sample_negatives(rng: random.Random, catalog: list[str], exclude: set[str], n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        item = rng.choice(catalog)
        if item not in exclude and item not in out:
            out.append(item)
    return out


def _natural(key: str):
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


# -- generation with a disk cache -----------------------------------------------------------------
def model_dtype(lm) -> str:
    """The precision a model generates in, as the text cache keys it (fp32 and bf16 texts differ)."""
    return str(getattr(lm.model, "dtype", "unknown"))


class TextCache:
    """Generated texts by a hash of (model, kind, settings, input); a rerun regenerates nothing."""

    def __init__(self, path: Path | None):
        self.path = path
        self.data: dict[str, str] = {}
        if path is not None and path.is_file():
            self.data = json.loads(path.read_text())

    @staticmethod
    def key(*parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def save(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data))
            tmp.replace(self.path)


class Texts:
    """Captions and summaries for the protocol, batched and cached."""

    def __init__(self, lm, data: Dataset, config: EvalConfig, cache: TextCache, log, summary_lm=None):
        from models.llm.captioner import CaptionConfig, Captioner
        from models.llm.user_summarizer import SummarizerConfig, UserSummarizer

        self.lm, self.data, self.config, self.cache, self.log = lm, data, config, cache, log
        self.captioner = Captioner(lm, CaptionConfig(max_new_tokens=config.caption_tokens,
                                                          batch_size=config.generation_batch))
        self.summarizer = UserSummarizer(summary_lm or lm, SummarizerConfig(block_size=config.block,
                                                              max_new_tokens=config.summary_tokens,
                                                              batch_size=config.generation_batch))
        self.captions: dict[str, str] = {}

    def caption_all(self, item_ids: set[str]) -> None:
        from models.llm.captioner import ItemInput

        keys = {i: self.cache.key(self.lm.name, "caption", self.config.caption_tokens, self.data.items[i],
                                  model_dtype(self.lm))
                for i in item_ids}
        todo = sorted((i for i in item_ids if keys[i] not in self.cache.data), key=_natural)
        self.log(f"captions: {len(item_ids) - len(todo)} cached, {len(todo)} to write")
        step = self.config.generation_batch * 4
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            inputs = [ItemInput(i, self.data.items[i]["title"], self.data.items[i]["categories"],
                                self.data.items[i].get("description")) for i in chunk]
            for i, caption in zip(chunk, self.captioner.caption(inputs)):
                self.cache.data[keys[i]] = "" if caption.rejected else caption.text
            self.cache.save()
            self.log(f"captions: {min(start + step, len(todo))}/{len(todo)}")
        self.captions = {i: self.cache.data[keys[i]] for i in item_ids}

    def record(self, item_id: str) -> dict:
        """The item in the shape the stream stores it (``pipeline``'s input), with its caption."""
        return {**self.data.items[item_id], "item_id": item_id, "caption": self.captions.get(item_id)}

    def item_text(self, item_id: str, captions: bool) -> str:
        return pipeline.item_text(self.record(item_id), item_id, captions)

    def summaries(self, cases: list[UserCase], mode: str, captions: bool) -> dict[str, list[str]]:
        """S_1..S_T per user: recurrent (one batched step per block) or direct (each prefix of blocks at once)."""
        histories = [[self.item_text(i, captions) for i in c.window] for c in cases]
        # the prompt is part of the key: a summary written under another prompt is another text
        # and so is the precision: bf16 and fp32 greedy decoding write different texts (bench/cpu_precision.py)
        key = self.cache.key(self.summarizer.lm.name, "summaries", mode, self.config.summary_tokens, self.config.block,
                             self.summarizer.config.prompt.label, histories, model_dtype(self.summarizer.lm))
        if key not in self.cache.data:
            started = time.perf_counter()
            if mode == "recurrent":
                result = self.summarizer.recurrent(histories)
            else:
                size = self.config.block
                prefixes = [(u, h[:end]) for u, h in enumerate(histories) for end in range(size, len(h) + 1, size)]
                flat = self.summarizer.direct([p for _, p in prefixes])
                result = [[] for _ in histories]
                for (u, _), summary in zip(prefixes, flat):
                    result[u].append(summary)
            self.cache.data[key] = json.dumps(result)
            self.cache.save()
            self.log(f"summaries ({mode}, captions {'on' if captions else 'off'}): "
                     f"{sum(map(len, result))} in {time.perf_counter() - started:.0f}s")
        return {c.user_id: s for c, s in zip(cases, json.loads(self.cache.data[key]))}


# -- the LLM variants -------------------------------------------------------------------------------
def candidate(texts: Texts, item_id: str, captions: bool):
    return pipeline.candidate(texts.record(item_id), item_id, captions)


def recent_titles(texts: Texts, items: list[str], n: int) -> list[str]:
    return [texts.data.items[i]["title"] for i in items[-n:]]


def variant_prompts(name: str, texts: Texts, cases: list[UserCase], summaries: dict) -> tuple[list, list, list]:
    """(training examples, test requests, validation requests: None for a user without one) of one
    text variant. Every example and request carries the history before its item, which the
    collaborative tokens read (text-only scorers ignore it)."""
    import dataclasses

    from models.llm.training import Example

    captions = name not in ("no-captions", "tallrec-style")  # TALLRec reads titles, as in its paper
    tallrec = name == "tallrec-style"
    examples, requests, validation = [], [], []
    for case in cases:
        def request(candidates, before=None, t=-1, case=case):
            """The shared part as of summary S_t, or of the titles before item ``before`` (TALLRec)."""
            history = case.history if before is None else case.before(before)
            if tallrec:
                made = pipeline.recent_titles_request(recent_titles(texts, history, texts.config.recent_titles),
                                                      candidates)
            else:
                made = pipeline.preference_request(summaries[case.user_id][t], candidates)
            return dataclasses.replace(made, history=tuple(history))

        for t, positive, negative in case.train_pairs:
            shared = request([], before=positive, t=t)
            examples += [Example(shared.user_part, candidate(texts, positive, captions), True, shared.history),
                         Example(shared.user_part, candidate(texts, negative, captions), False, shared.history)]
        requests.append(request([candidate(texts, i, captions) for i in case.candidates()]))
        if case.validation is not None:
            t, item, negatives = case.validation
            validation.append(request([candidate(texts, i, captions) for i in [item, *negatives]], before=item, t=t))
        else:
            validation.append(None)
    return examples, requests, validation


# -- metrics ----------------------------------------------------------------------------------------
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


# -- the run ------------------------------------------------------------------------------------------
def run(config: EvalConfig, out_dir: Path, data: Dataset | None = None, cache_dir: Path | None = None,
        log=print) -> dict:
    """Everything in one process; writes results.json, results.md and results.png under ``out_dir``."""
    from models import registry
    from models.candidates.sasrec import SASRecScorer
    from models.evaluation.baselines import PopularityScorer, RandomScorer
    from models.config import SASRecConfig
    from models.llm.recommender import Recommender
    from models.llm.serving import load_adapter
    from models.config import LoraSettings
    from models.llm.training import TrainConfig, git_revision, train

    started = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset_name = "movielens-100k" if data is None else "events"
    data = data or Dataset.movielens()
    sources = candidate_stage(data)  # hard negatives and the fused score's features: one replay for the run
    cases = build_cases(data, config, sources)
    log(f"{len(cases)} users, {sum(len(c.train_pairs) for c in cases)} training positives, "
        f"{len(config.seeds)} seeds x {config.negatives} negatives")
    timings: dict[str, float] = {}
    scores: dict[str, dict[str, dict[str, float]]] = {}
    machine, revision = machine_info(config.device), git_revision()  # fixed for the run

    def clock(name, fn, *args):
        t = time.perf_counter()
        result = fn(*args)
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t, 1)
        return result

    summaries: dict[str, dict[str, list[str]]] = {}
    training: dict[str, dict] = {}
    metrics: dict[str, dict] = {}
    fusion: dict[str, dict] = {}

    def write_report() -> dict:
        """Rewritten after every model, so a run stopped part-way keeps the models it finished."""
        for name in scores.keys() - metrics.keys():
            metrics[name] = evaluate_scores(cases, scores[name], config.seeds, config.bootstrap)
        report = {
            "dataset": dataset_name, "config": _jsonable(config), "users": [c.user_id for c in cases],
            "metrics": metrics, "training": training, "fusion": fusion, "seconds": timings,
            "total_seconds": round(time.time() - started, 1), "git_revision": revision, "machine": machine,
            "example_summaries": {c.user_id: summaries["recurrent"][c.user_id][-1]
                                  for c in cases[:3] if "recurrent" in summaries},
        }
        (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        (out_dir / "results.md").write_text(markdown_table(report))
        chart(report, out_dir / "results.png")
        return report

    # baselines: trained on every user's history (test items excluded)
    train_sequences = {u: seq[:-1] for u, seq in data.sequences.items()}
    baselines = {"random": RandomScorer(config.seed), "popularity": PopularityScorer(train_sequences),
                 "sasrec": clock("sasrec", SASRecScorer, train_sequences,
                                 SASRecConfig(epochs=config.sasrec_epochs, seed=config.seed,
                                              device=config.device))}
    for name, scorer in baselines.items():
        scores[name] = {}
        for case in cases:
            items = case.candidates()
            scores[name][case.user_id] = dict(zip(items, scorer.score(case.user_id, case.history, items)))
    write_report()

    runs = planned_variants(config)
    sequential = None
    if any(v in COLLAB_VARIANTS for v in runs):
        from models.candidates.sequential import SequentialRetriever

        sequential = clock("sasrec-pre-validation", SequentialRetriever.train, pre_validation(data),
                           SASRecConfig(epochs=config.sasrec_epochs, seed=config.seed, device=config.device))
        sequential.model.cpu()
        scores["sasrec-pre-validation"] = {c.user_id: dict(zip(c.candidates(), sequential.item_scores(
            c.history, c.candidates()))) for c in cases}
        write_report()

    lm = registry.load(config.model, device=config.device)
    summary_lm = (registry.load(config.summary_model, device=config.device, generates=True)  # as the worker loads it
                  if config.summary_model and config.summary_model != config.model else lm)
    texts = Texts(lm, data, config, TextCache((cache_dir or out_dir) / "texts-cache.json"), log, summary_lm)
    needed = {i for c in cases for i in c.window + c.candidates() + [p for _, p, n in c.train_pairs]
              + [n for _, p, n in c.train_pairs] + ([c.validation[1], *c.validation[2]] if c.validation else [])}
    clock("captions", texts.caption_all, needed)
    summaries["recurrent"] = clock("summaries", texts.summaries, cases, "recurrent", True)
    if "direct-summary" in runs:
        summaries["direct"] = clock("summaries", texts.summaries, cases, "direct", True)
    if "no-captions" in runs:
        summaries["recurrent-no-captions"] = clock("summaries", texts.summaries, cases, "recurrent", False)
    source = {"mllm-msr": "recurrent", "direct-summary": "direct", "no-captions": "recurrent-no-captions",
              "tallrec-style": "recurrent"}

    def score_all(name: str, recommender, requests) -> None:
        result = clock(f"scoring:{name}", recommender.score, requests)
        scores[name] = {c.user_id: dict(zip(c.candidates(), s)) for c, s in zip(cases, result)}
        write_report()
        log(f"{name}: scored; {out_dir / 'results.md'} updated")

    if config.zero_shot:
        _, requests, _ = variant_prompts("mllm-msr", texts, cases, summaries["recurrent"])
        score_all("zero-shot", Recommender(lm), requests)
    lora = LoraSettings()

    def fit_stage(name: str, examples, stage: str, epochs: int, lr: float, init: Path | None = None) -> Path:
        log(f"{name}: {stage} stage on {len(examples)} examples")
        info = {"dataset": dataset_name, "variant": name, "users": len(cases), "examples": len(examples),
                "eval": _jsonable(config)}
        metadata = clock(f"training:{name}", train_stage, config, lora, sequential, examples,
                         out_dir / "adapters" / name, stage, epochs, lr, init, info)
        training[name] = metadata["metrics"]
        return out_dir / "adapters" / name / "adapter"

    for name in runs:
        if name == "fused":
            continue
        base = STAGE_ONE.get(name, name)
        examples, requests, validation = variant_prompts(base, texts, cases, summaries[source[base]])
        if name in STAGE_ONE:  # stage 2 (and 3): the projector on top of the text variant's frozen LoRA
            adapter = fit_stage(name, examples, "projector", config.projector_epochs, config.projector_lr,
                                out_dir / "adapters" / base / "adapter")
            if config.joint_epochs:
                adapter = fit_stage(f"{name}-joint", examples, "joint", config.joint_epochs, config.lr, adapter)
        else:
            adapter = fit_stage(name, examples, "lora", config.epochs, config.lr)
        recommender = load_adapter(registry.load(config.model, device=config.device), adapter, sequential=sequential)
        score_all(name, recommender, requests)
        if name == config.fused_llm and "fused" in runs:
            scorer = clock("fused", fit_fusion, recommender, sequential, sources, adapter, validation, cases, config)
            scores["fused"] = fused_test_scores(scorer, scores[name], sequential, sources, cases)
            fusion[name] = {"weights": scorer.report(), "fitted_on": scorer.fitted_on}
            write_report()
    return write_report()


def train_stage(config: EvalConfig, lora, sequential, examples: list, run_dir: Path, stage: str, epochs: int,
                lr: float, init: Path | None = None, info: dict | None = None) -> dict:
    """One training stage into ``run_dir``/adapter on a fresh model; after stage 1 with collaborative
    tokens read from ``sequential``, through a new projector or the one ``init`` holds."""
    from models import registry
    from models.llm.collab import CollabTokens, Projector, has_projector
    from models.llm.training import TrainConfig, train

    train_config = TrainConfig(epochs=epochs, batch_size=config.train_batch, grad_accum=config.grad_accum,
                               lr=lr, seed=config.seed, checkpoint_every=25, stage=stage)
    fresh = registry.load(config.model, device=config.device)
    collab = None
    if stage != "lora":
        projector = Projector.from_pretrained(init) if has_projector(init) else \
            Projector.for_models(fresh, sequential, seed=config.seed)
        collab = CollabTokens(projector, sequential, fresh.tokenizer)
    return train(fresh, examples, run_dir, lora, train_config, info, True, None, collab, init)


def planned_variants(config: EvalConfig) -> list[str]:
    """The variants to run, in order: those asked for, plus what they stand on (a collaborative
    variant's text variant, the fused score's LLM)."""
    asked = list(config.variants)
    if "fused" in asked and config.fused_llm not in asked:
        if config.fused_llm not in LLM_VARIANTS or config.fused_llm == "fused":
            raise ValueError(f"fused_llm must be one of the LLM variants, not {config.fused_llm!r}")
        asked.insert(asked.index("fused"), config.fused_llm)
    needed = set(asked) | {STAGE_ONE[v] for v in asked if v in STAGE_ONE}
    return [v for v in LLM_VARIANTS if v in needed]


def fusion_rows(stage, sequential, history: list[str], items: list[str], p_yes: list[float]) -> list[list[float]]:
    """The fused score's features (``models.llm.fusion.FEATURES``) of ``items`` for a user with ``history``."""
    import math

    from models.llm.fusion import llm_margin

    cooc = stage.cooccurrence_scores(history)
    seq = sequential.item_scores(history, items)
    return [[llm_margin(p), s, cooc.get(i, 0.0), math.log1p(stage.counts.get(i, 0))]
            for i, p, s in zip(items, p_yes, seq)]


def fit_fusion(recommender, sequential, stage, adapter: Path, validation: list, cases: list[UserCase],
               config: EvalConfig):
    """Fit the fused score on the validation requests (scored by ``recommender``; ``stage`` is
    ``candidate_stage``'s) and save it beside the adapter; the ``FusedScorer``."""
    from models.llm import fusion

    todo = [(c, r) for c, r in zip(cases, validation) if r is not None]
    p_yes = recommender.score([r for _, r in todo])
    x, y, groups = [], [], []
    for (case, request), probs in zip(todo, p_yes):
        items = [c.item_id for c in request.candidates]
        x += fusion_rows(stage, sequential, list(request.history), items, probs)
        y += [1.0] + [0.0] * (len(items) - 1)
        groups += [case.user_id] * len(items)
    scorer = fusion.fit(x, y, groups, bootstrap=min(config.bootstrap, 200), seed=config.seed,
                        info={"llm": config.fused_llm, "adapter_version": recommender.version,
                              "validation_users": len(todo)})
    scorer.save_pretrained(adapter)
    return scorer


def fused_test_scores(scorer, llm_scores: dict, sequential, stage, cases: list[UserCase]) -> dict:
    """The fused score of every test candidate, from the LLM variant's p(Yes) of it."""
    out = {}
    for case in cases:
        items = case.candidates()
        rows = fusion_rows(stage, sequential, case.history, items, [llm_scores[case.user_id][i] for i in items])
        out[case.user_id] = dict(zip(items, scorer.logits(rows).tolist()))
    return out


def machine_info(requested: str) -> dict:
    """Where the figures came from: the accelerator's name, or the host's core count."""
    import os

    import torch

    from models.device import pick_device

    device = pick_device(requested)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    return {"device": name, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def train_adapter(config: EvalConfig, out_dir: Path, lora=None, data: Dataset | None = None,
                  *, cache_dir: Path | None = None, log=print, sequential_dir: Path | None = None,
                  fused: bool = False) -> dict:
    """``mmsr train``: the full pipeline's adapter (recurrent summaries with captions) from a log.

    The same protocol as the evaluation: per user, the last item is held out; training pairs come
    from the summarized history only (1 positive : 1 sampled negative, half of them hard). With
    ``sequential_dir`` (the sequential model the stream serves) CoLLM's later stages follow: the
    projector (stage-1 LoRA frozen), then ``joint_epochs`` of both; with ``fused`` the fused score is
    fitted on the validation pairs. Earlier stages stay under ``stages/``; the last writes
    ``out_dir``/adapter, the directory a worker watches. Each stage resumes from its checkpoints.
    """
    from models import registry
    from models.config import LoraSettings
    from models.llm.serving import load_adapter

    dataset_name = "movielens-100k" if data is None else "events"
    data = data or Dataset.movielens()
    out_dir = Path(out_dir)
    sources = candidate_stage(data)
    cases = build_cases(data, config, sources)
    lm = registry.load(config.model, device=config.device)
    summary_lm = (registry.load(config.summary_model, device=config.device, generates=True)  # as the worker loads it
                  if config.summary_model and config.summary_model != config.model else lm)
    texts = Texts(lm, data, config, TextCache((cache_dir or out_dir) / "texts-cache.json"), log, summary_lm)
    texts.caption_all({i for c in cases for i in c.window + [p for _, p, _ in c.train_pairs]
                       + [n for _, _, n in c.train_pairs] + ([c.validation[1], *c.validation[2]] if c.validation else [])})
    summaries = texts.summaries(cases, "recurrent", True)
    examples, _, validation = variant_prompts("mllm-msr", texts, cases, summaries)
    log(f"training on {len(examples)} examples from {len(cases)} users")
    sequential = None
    stages = [("lora", config.epochs, config.lr)]
    if sequential_dir is not None:
        from models.candidates.sequential import SequentialRetriever

        sequential = SequentialRetriever.from_pretrained(sequential_dir)
        stages += [("projector", config.projector_epochs, config.projector_lr)]
        stages += [("joint", config.joint_epochs, config.lr)] if config.joint_epochs else []
    elif fused:
        raise ValueError("the fused score reads the sequential model's scores: give the sequential model too")
    info = {"dataset": dataset_name, "users": len(cases), "examples": len(examples), "protocol": _jsonable(config)}
    init = None
    for n, (stage, epochs, lr) in enumerate(stages):
        run_dir = out_dir if n == len(stages) - 1 else out_dir / "stages" / stage
        log(f"stage {stage}: {epochs} epochs")
        metadata = train_stage(config, lora or LoraSettings(), sequential, examples, run_dir, stage, epochs, lr, init,
                               info)
        init = run_dir / "adapter"
    if fused:
        recommender = load_adapter(registry.load(config.model, device=config.device), init, sequential=sequential)
        scorer = fit_fusion(recommender, sequential, sources, init, validation, cases, config)
        metadata["fusion"] = scorer.report()
        log(f"fused score: {json.dumps(scorer.report())}")
    return metadata


def _jsonable(config: EvalConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


# -- report -------------------------------------------------------------------------------------------
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
