"""`mmsr produce`, `mmsr replay` and `mmsr recs`: events in, lists out."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from streams.cli.base import common, connected, dataset_option, main, one_line_errors
from streams.settings import load


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
