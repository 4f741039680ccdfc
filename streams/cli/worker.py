"""`mmsr worker`: one Faust worker of any role."""
from __future__ import annotations


import click

from streams.cli.base import WORKER_OPTIONS, common, connected, main, one_line_errors, settings_options
from streams.settings import load


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
    from streams.tuning import collect_garbage_for_throughput, keep_freed_memory

    collect_garbage_for_throughput()
    keep_freed_memory(s.malloc_keep_mb)
    from faust.worker import Worker as FaustWorker

    FaustWorker(w.app, loglevel=loglevel, quiet=True, redirect_stdouts=False).execute_from_commandline()
