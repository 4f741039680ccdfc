"""`mmsr train`, `mmsr eval`, `mmsr train-retrieval` and `mmsr eval-stream`: models trained and measured."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from models.config import (LLM_VARIANTS, PRESETS, EaseConfig, EvalConfig, LeaveOneOutOptions, LoraSettings,
                           SequentialSourceConfig)
from streams.cli.base import field_options, log_options, main, one_line_errors
from streams.harness.eval_stream import StreamEvalConfig
from streams.settings import Settings


lora_options = field_options(LoraSettings, prefix="lora-")


def eval_config(preset: str, values: dict):
    """A preset with the options the user gave on top (None: keep the preset's value)."""
    import dataclasses

    config = PRESETS[preset]
    changes = {}
    for name, value in values.items():
        if value is None:
            continue
        default = getattr(config, name)
        if isinstance(default, tuple):
            value = tuple(type(default[0])(v) if default else v for v in str(value).split(",") if v)
        changes[name] = value
    return dataclasses.replace(config, **changes)


def given_together(items, interactions) -> bool:
    """True for --items with --interactions, False for neither (bundled MovieLens); one alone is an error."""
    if (items is None) != (interactions is None):
        raise click.UsageError("--items and --interactions go together (or neither, for bundled MovieLens)")
    return items is not None


def event_data(items, interactions, dataset: str = "ml-100k"):
    from models.evaluation.paper import Dataset

    if not given_together(items, interactions):
        return None if dataset == "ml-100k" else Dataset.movielens(dataset)
    return Dataset.from_events(items, interactions)


EVAL_FIELDS = ("model", "summary_model", "users", "window", "block", "next_items", "seeds", "caption_tokens", "summary_tokens", "epochs",
               "train_batch", "grad_accum", "lr", "hard_negatives", "hard_pool", "seed", "device")


@main.command()
@click.option("--out", default="adapters/mllm-msr", type=click.Path(path_type=Path),
              help="run directory: checkpoints while training, then adapter/ (watch it with MMSR_RECOMMENDER_ADAPTER)")
@click.option("--preset", type=click.Choice(["default", "gpu", "smoke"]), default="default", help="protocol settings")
@log_options
@lora_options
@click.option("--sequential-model", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="collaborative tokens: the sequential model directory the stream serves (mmsr train-retrieval; "
                   "train it on data before the validation items, or the fused weights overrate it); adds the "
                   "projector stage (and --joint-epochs of both)")
@click.option("--fused/--no-fused", default=False, show_default=True,
              help="also fit the fused score on the validation pairs (needs --sequential-model)")
@click.option("--until", default=None, help="RFC 3339: train on events before this time only (e.g. an eval-stream split)")
@field_options(EvalConfig, *EVAL_FIELDS, "projector_epochs", "projector_lr", "joint_epochs", "validation_negatives",
               preset=True)
@one_line_errors
def train(out, preset, items, interactions, dataset, lora_r, lora_alpha, lora_dropout, lora_target_modules, sequential_model,
          fused, until, **values):
    """Fine-tune the recommender with LoRA on a log (leave-last-out, recurrent summaries, 1:1 negatives).

    Resumes from the run directory's last checkpoint when one is there.
    """
    from models.evaluation.paper import train_adapter

    config = eval_config(preset, values)
    lora = LoraSettings(r=lora_r, alpha=lora_alpha, dropout=lora_dropout, target_modules=lora_target_modules)
    if until:
        from models.evaluation.paper import dataset_of

        data = dataset_of(*load_log(items, interactions, until, dataset))
    else:
        data = event_data(items, interactions, dataset)
    metadata = train_adapter(config, out, lora, data, log=click.echo, sequential_dir=sequential_model, fused=fused)
    click.echo(f"adapter {metadata['version']} in {out / 'adapter'} (loss {metadata['metrics']['first_loss']:.4f} "
               f"-> {metadata['metrics']['final_loss']:.4f})")


@main.command("eval")
@click.option("--out", default="eval-results", type=click.Path(path_type=Path),
              help="results.json, results.md, results.png and the trained adapters")
@click.option("--preset", type=click.Choice(["default", "gpu", "smoke"]), default="default",
              help="'default': the documented CPU run; 'gpu': every user, longer window; 'smoke': tiny model, a few "
                   "users (tests)")
@log_options
@click.option("--variants", default=",".join(LLM_VARIANTS),
              show_default=True, help="LoRA-trained models to run (comma-separated)")
@click.option("--protocol", type=click.Choice(["paper", "full-catalog", "leave-one-out"]), default="paper",
              show_default=True,
              help="'paper': 1 positive : 20 negatives for the LLM pipeline; 'full-catalog': each candidate source "
                   "and their blend ranking the whole catalog, leave-last-out (no LLM); 'leave-one-out': the same "
                   "as the sequential-recommendation papers run it (validation item for every choice, test item "
                   "read once; mmsr eval-loo for its options)")
@field_options(EvalConfig, *EVAL_FIELDS, "sasrec_epochs", "projector_epochs", "projector_lr", "joint_epochs",
               "validation_negatives", "fused_llm", "bootstrap", "zero_shot", preset=True)
@field_options(LeaveOneOutOptions, prefix="loo-")
@one_line_errors
def evaluate(out, preset, items, interactions, dataset, variants, protocol, **values):
    """The paper's protocol (1 positive : 20 negatives, several seeds) for the LLM pipeline, its
    ablations and the baselines; a markdown table and a PNG chart. Or the candidate sources over
    the full catalog (--protocol full-catalog, or leave-one-out with its --loo-* options)."""
    loo = LeaveOneOutOptions(**{name.removeprefix("loo_"): values.pop(name) for name in list(values)
                                if name.startswith("loo_")})
    if protocol == "full-catalog":
        return full_catalog_eval(out, items, interactions, values.get("sasrec_epochs"), dataset)
    if protocol == "leave-one-out":
        return leave_one_out_eval(out, items, interactions, dataset, loo)
    from models.evaluation.paper import run

    values["variants"] = tuple(v for v in variants.split(",") if v)
    unknown = set(values["variants"]) - set(LLM_VARIANTS)
    if unknown:
        raise click.UsageError(f"unknown variants {sorted(unknown)}; choose from {list(LLM_VARIANTS)}")
    config = eval_config(preset, {k: v for k, v in values.items() if k != "variants"})
    import dataclasses

    config = dataclasses.replace(config, variants=values["variants"])
    report = run(config, out, event_data(items, interactions, dataset), log=click.echo)
    click.echo((out / "results.md").read_text())
    click.echo(f"{report['total_seconds']:.0f}s; written to {out}/results.json, results.md, results.png")


def load_log(items, interactions, until: str | None = None, dataset: str = "ml-100k") -> tuple[list[dict], list[dict]]:
    """Item events, and interaction events validated and in time order (before ``until``):
    bundled MovieLens, or JSON-lines files in the topics' schemas."""
    import json

    import schemas
    from streams.replay import window

    if not given_together(items, interactions):
        from models.data import movielens

        catalog, events = list(movielens.items(dataset)), movielens.interactions(dataset)
    else:
        read = lambda path: [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]  # noqa: E731
        catalog, events = read(items), read(interactions)
    return catalog, window([schemas.validate("interaction", e) for e in events], None, until)


@main.command("train-retrieval")
@click.option("--out", default="models-trained/sequential", show_default=True, type=click.Path(path_type=Path),
              help="model directory (watch it with MMSR_RETRIEVAL_MODEL)")
@log_options
@click.option("--until", default=None, help="RFC 3339: train on events before this time only")
@field_options(SequentialSourceConfig)
@field_options(EaseConfig, prefix="ease-")
@one_line_errors
def train_retrieval(out, items, interactions, dataset, until, ease_l2, ease_max_items, **sasrec):
    """Train the sequential candidate source (SASRec) and EASE on a log and save them with a new version."""
    from models.candidates.sequential import train_into

    _, events = load_log(items, interactions, until, dataset)
    train_into(out, events, SequentialSourceConfig(**sasrec), until=until, echo=click.echo,
               ease=EaseConfig(l2=ease_l2, max_items=ease_max_items))


@main.command("eval-stream")
@click.option("--out", default="eval-stream-results", show_default=True, type=click.Path(path_type=Path),
              help="results.json, results.md, the worker's log and state")
@log_options
@click.option("--bootstrap-servers", default=None, help="an existing cluster (default: a local broker for the run)")
@field_options(StreamEvalConfig)
@click.option("--set", "worker_set", multiple=True, help="worker setting for the run, NAME=VALUE (e.g. cooc_window=10)")
@one_line_errors
def eval_stream(out, items, interactions, dataset, bootstrap_servers, worker_set, **options):
    """Replay a log through a real broker and worker; score each test event against the list emitted before it."""
    from streams.harness.eval_stream import run

    overrides = {}
    for pair in worker_set:
        name, _, value = pair.partition("=")
        if name not in Settings.model_fields:
            raise click.UsageError(f"--set {name}: not a setting")
        overrides[name] = value
    config = StreamEvalConfig(**options)
    catalog, events = load_log(items, interactions, dataset=dataset)
    run(config, out, catalog, events, bootstrap=bootstrap_servers, worker_settings=overrides, log=click.echo)
    click.echo((Path(out) / "results.md").read_text())


def full_catalog_eval(out: Path, items, interactions, sasrec_epochs, dataset: str = "ml-100k") -> None:
    import json

    from models.embeddings import TextEmbedder
    from models.evaluation.prequential import full_catalog

    catalog, events = load_log(items, interactions, dataset=dataset)
    settings = Settings()
    embedder = TextEmbedder(settings.embed_model, device="cpu")
    result = full_catalog(events, {i["item_id"]: i for i in catalog}, settings.cooccurrence_config(),
                          settings.blend_weights(), sasrec_epochs=sasrec_epochs or SequentialSourceConfig.epochs,
                          embed=lambda texts: embedder.embed(texts), progress=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = ["| source | HR@10 | NDCG@10 | Recall@50 | coverage |", "|---|---|---|---|---|"]
    for name, r in result["sources"].items():
        rows.append(f"| {name} | {r['HR@10']:.3f} | {r['NDCG@10']:.3f} | {r['Recall@50']:.3f} | {r['coverage']:.3f} |")
    table = "\n".join([f"# Full catalog, leave-last-out ({result['users']} users)", "", *rows, ""])
    (out / "results.md").write_text(table)
    click.echo(table)


def leave_one_out_eval(out: Path, items, interactions, dataset: str, options: LeaveOneOutOptions) -> None:
    import dataclasses
    import json
    import subprocess

    from models.evaluation import leave_one_out as loo

    numbers = lambda text: tuple(float(v) for v in text.split(",") if v.strip())  # noqa: E731
    stream = SequentialSourceConfig(epochs=options.max_epochs)
    trials = ([stream] if options.stream_sasrec else []) + [
        dataclasses.replace(stream, max_len=int(n), loss=options.long_loss, negatives=options.negatives)
        for n in numbers(options.long_max_len)]
    config = loo.LeaveOneOutConfig(sasrec=tuple(trials), check_every=options.check_every, patience=options.patience,
                                   ease_l2=numbers(options.ease_l2), rrf_k=numbers(options.rrf_k),
                                   bootstrap=options.bootstrap)
    _, events = load_log(items, interactions, dataset=dataset)
    out.mkdir(parents=True, exist_ok=True)
    run = loo.Run(events, config, Settings().cooccurrence_config(), log=click.echo)
    click.echo(f"{len(run.split.test)} users, {len(run.split.train)} training events")
    run.fit_counts()
    run.fit_ease()
    run.fit_sasrec()
    run.fit_blend()
    sources = ["cooccurrence", "ease", "trending", "popularity"]
    sources += [f"sequential-{n}" for n in range(len(trials))] + ["blend"]
    for name in sources:
        result = run.test(name)
        click.echo(f"test {name}: HR@10 {result['HR@10']:.4f} NDCG@10 {result['NDCG@10']:.4f}")
    report = run.report()
    if "sequential" in run.chosen:
        report["test"]["sequential"] = report["test"][f"sequential-{run.chosen['sequential']['trial']}"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report.update(dataset=dataset, commit=commit or None, command=" ".join(["mmsr", *sys.argv[1:]]),
                  options=dataclasses.asdict(options))
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(loo.markdown(report))
    click.echo((out / "results.md").read_text())
