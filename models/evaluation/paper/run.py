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
    from models import registry
    from models.candidates.sasrec import SASRecScorer
    from models.evaluation.baselines import PopularityScorer, RandomScorer
    from models.config import SASRecConfig
    from models.llm.recommender import Recommender
    from models.llm.serving import load_adapter
    from models.config import LoraSettings
    from models.llm.training import git_revision

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
