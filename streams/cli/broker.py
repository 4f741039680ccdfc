"""`mmsr kafka` and `mmsr topics`: the local broker and the topics the worker expects."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from streams.cli.base import common, connected, main, one_line_errors, settings_options
from streams.settings import load


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
