"""One run of the protocol: texts, LoRA stages, scoring, the fused score, then the report; and
`mmsr train`'s adapter."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path


from models.config import COLLAB_VARIANTS, STAGE_ONE, EvalConfig
from models.evaluation.paper.data import Dataset, build_cases, candidate_stage, pre_validation
from models.evaluation.paper.report import chart, evaluate_scores, markdown_table
from models.evaluation.paper.texts import TextCache, Texts
from models.evaluation.paper.variants import fit_fusion, fused_test_scores, planned_variants, variant_prompts


def run(config: EvalConfig, out_dir: Path, data: Dataset | None = None, cache_dir: Path | None = None,
        log=print) -> dict:
    """Everything in one process; writes results.json, results.md and results.png under ``out_dir``."""
    protocol = ProtocolRun(config, out_dir, data, cache_dir, log)
    protocol.score_baselines()
    protocol.prepare_texts()
    protocol.score_variants()
    return protocol.write_report()


class ProtocolRun:
    """One run's state: the users, every model's scores, the texts, the trained stages. The report
    is rewritten after every model, so a run stopped part-way keeps the models it finished."""

    SUMMARIES_OF = {"mllm-msr": "recurrent", "direct-summary": "direct", "no-captions": "recurrent-no-captions",
                    "tallrec-style": "recurrent"}

    def __init__(self, config: EvalConfig, out_dir: Path, data: Dataset | None, cache_dir: Path | None, log):
        from models.llm.training import git_revision

        self.config, self.log, self.started = config, log, time.time()
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir = cache_dir
        self.data = data or Dataset.movielens()
        self.sources = candidate_stage(self.data)  # hard negatives and the fused score's features: one replay
        self.cases = build_cases(self.data, config, self.sources)
        log(f"{len(self.cases)} users, {sum(len(c.train_pairs) for c in self.cases)} training positives, "
            f"{len(config.seeds)} seeds x {config.negatives} negatives")
        self.timings: dict[str, float] = {}
        self.scores: dict[str, dict[str, dict[str, float]]] = {}
        self.summaries: dict[str, dict[str, list[str]]] = {}
        self.training: dict[str, dict] = {}
        self.metrics: dict[str, dict] = {}
        self.fusion: dict[str, dict] = {}
        self.machine, self.revision = machine_info(config.device), git_revision()  # fixed for the run
        self.runs = planned_variants(config)
        self.sequential = None
        self.texts = self.lm = None

    def clock(self, name, fn, *args):
        t = time.perf_counter()
        result = fn(*args)
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t, 1)
        return result

    def write_report(self) -> dict:
        for name in self.scores.keys() - self.metrics.keys():
            self.metrics[name] = evaluate_scores(self.cases, self.scores[name], self.config.seeds, self.config.bootstrap)
        report = {
            "dataset": self.data.name, "config": _jsonable(self.config), "users": [c.user_id for c in self.cases],
            "metrics": self.metrics, "training": self.training, "fusion": self.fusion, "seconds": self.timings,
            "total_seconds": round(time.time() - self.started, 1), "git_revision": self.revision,
            "machine": self.machine,
            "example_summaries": {c.user_id: self.summaries["recurrent"][c.user_id][-1]
                                  for c in self.cases[:3] if "recurrent" in self.summaries},
        }
        (self.out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        (self.out_dir / "results.md").write_text(markdown_table(report))
        chart(report, self.out_dir / "results.png")
        return report

    def score_baselines(self) -> None:
        """Random, popularity and SASRec, trained on every user's history (test items excluded); and
        the collaborative variants' SASRec, trained on everything before the validation items."""
        from models.candidates.sasrec import SASRecScorer
        from models.config import SASRecConfig
        from models.evaluation.baselines import PopularityScorer, RandomScorer

        config = self.config
        sasrec = SASRecConfig(epochs=config.sasrec_epochs, seed=config.seed, device=config.device)
        train_sequences = {u: seq[:-1] for u, seq in self.data.sequences.items()}
        baselines = {"random": RandomScorer(config.seed), "popularity": PopularityScorer(train_sequences),
                     "sasrec": self.clock("sasrec", SASRecScorer, train_sequences, sasrec)}
        for name, scorer in baselines.items():
            self.scores[name] = {}
            for case in self.cases:
                items = case.candidates()
                self.scores[name][case.user_id] = dict(zip(items, scorer.score(case.user_id, case.history, items)))
        self.write_report()
        if any(v in COLLAB_VARIANTS for v in self.runs):
            from models.candidates.sequential import SequentialRetriever

            self.sequential = self.clock("sasrec-pre-validation", SequentialRetriever.train, pre_validation(self.data),
                                         sasrec)
            self.sequential.model.cpu()
            self.scores["sasrec-pre-validation"] = {c.user_id: dict(zip(c.candidates(), self.sequential.item_scores(
                c.history, c.candidates()))) for c in self.cases}
            self.write_report()

    def prepare_texts(self) -> None:
        """The LLM, the captions every case needs, and the summaries of each mode the variants read."""
        from models import registry

        config = self.config
        self.lm = registry.load(config.model, device=config.device)
        summary_lm = (registry.load(config.summary_model, device=config.device, generates=True)  # as the worker loads it
                      if config.summary_model and config.summary_model != config.model else self.lm)
        cache = TextCache((self.cache_dir or self.out_dir) / "texts-cache.json")
        self.texts = Texts(self.lm, self.data, config, cache, self.log, summary_lm)
        needed = {i for c in self.cases for i in c.window + c.candidates() + [p for _, p, n in c.train_pairs]
                  + [n for _, p, n in c.train_pairs] + ([c.validation[1], *c.validation[2]] if c.validation else [])}
        self.clock("captions", self.texts.caption_all, needed)
        self.summaries["recurrent"] = self.clock("summaries", self.texts.summaries, self.cases, "recurrent", True)
        if "direct-summary" in self.runs:
            self.summaries["direct"] = self.clock("summaries", self.texts.summaries, self.cases, "direct", True)
        if "no-captions" in self.runs:
            self.summaries["recurrent-no-captions"] = self.clock("summaries", self.texts.summaries, self.cases,
                                                                 "recurrent", False)

    def score_all(self, name: str, recommender, requests) -> None:
        result = self.clock(f"scoring:{name}", recommender.score, requests)
        self.scores[name] = {c.user_id: dict(zip(c.candidates(), s)) for c, s in zip(self.cases, result)}
        self.write_report()
        self.log(f"{name}: scored; {self.out_dir / 'results.md'} updated")

    def fit_stage(self, name: str, examples, stage: str, epochs: int, lr: float, init: Path | None = None) -> Path:
        from models.config import LoraSettings

        self.log(f"{name}: {stage} stage on {len(examples)} examples")
        info = {"dataset": self.data.name, "variant": name, "users": len(self.cases), "examples": len(examples),
                "eval": _jsonable(self.config)}
        metadata = self.clock(f"training:{name}", train_stage, self.config, LoraSettings(), self.sequential, examples,
                              self.out_dir / "adapters" / name, stage, epochs, lr, init, info)
        self.training[name] = metadata["metrics"]
        return self.out_dir / "adapters" / name / "adapter"

    def score_variants(self) -> None:
        """The zero-shot model, then each LoRA variant trained and scored, then the fused score."""
        from models import registry
        from models.llm.recommender import Recommender
        from models.llm.serving import load_adapter

        config = self.config
        if config.zero_shot:
            _, requests, _ = variant_prompts("mllm-msr", self.texts, self.cases, self.summaries["recurrent"])
            self.score_all("zero-shot", Recommender(self.lm), requests)
        for name in self.runs:
            if name == "fused":
                continue
            base = STAGE_ONE.get(name, name)
            examples, requests, validation = variant_prompts(base, self.texts, self.cases,
                                                             self.summaries[self.SUMMARIES_OF[base]])
            if name in STAGE_ONE:  # stage 2 (and 3): the projector on top of the text variant's frozen LoRA
                adapter = self.fit_stage(name, examples, "projector", config.projector_epochs, config.projector_lr,
                                         self.out_dir / "adapters" / base / "adapter")
                if config.joint_epochs:
                    adapter = self.fit_stage(f"{name}-joint", examples, "joint", config.joint_epochs, config.lr,
                                             adapter)
            else:
                adapter = self.fit_stage(name, examples, "lora", config.epochs, config.lr)
            recommender = load_adapter(registry.load(config.model, device=config.device), adapter,
                                       sequential=self.sequential)
            self.score_all(name, recommender, requests)
            if name == config.fused_llm and "fused" in self.runs:
                scorer = self.clock("fused", fit_fusion, recommender, self.sequential, self.sources, adapter,
                                    validation, self.cases, config)
                self.scores["fused"] = fused_test_scores(scorer, self.scores[name], self.sequential, self.sources,
                                                         self.cases)
                self.fusion[name] = {"weights": scorer.report(), "fitted_on": scorer.fitted_on}
                self.write_report()


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
    info = {"dataset": data.name, "users": len(cases), "examples": len(examples), "protocol": _jsonable(config)}
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
