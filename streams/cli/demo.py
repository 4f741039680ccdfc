"""`mmsr demo`: what `make demo` runs."""
from __future__ import annotations

from pathlib import Path

import click

from models.config import SequentialSourceConfig
from streams.cli.base import main, one_line_errors
from streams.harness.demo import DEFAULT_DIR as DEMO_DIR


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
