"""`make demo`: a local broker, the worker, MovieLens-100K, blended top-10 lists with titles and sources."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from models.config import SequentialSourceConfig
from streams.harness.process import WorkerProcess, wait_until
from streams.kafka.admin import create_topics
from streams.kafka.client import latest_by_user
from streams.kafka.launcher import LocalKafka, free_port, port_is_free
from streams.settings import Settings


DEMO_MARK = ".mmsr-demo-dir"
DEFAULT_DIR = ".mmsr-demo"  # the CLI's default: the demo's own (demos before the mark left it unmarked)


def fresh_demo_dir(data_dir: Path) -> Path:
    """The demo's directory, emptied when an earlier demo left it (it carries DEMO_MARK).

    The demo replays the same MovieLens events into the same topics and state each time: a second
    run on the first's broker and RocksDB state found its users' blocks already summarized and
    waited for summaries that never came (seen: ``make demo`` twice in one checkout). A directory
    the demo did not make is never deleted: a non-empty one without the mark is refused, unless
    it is the default ``.mmsr-demo``."""
    mark = data_dir / DEMO_MARK
    if mark.exists() or (data_dir.name == DEFAULT_DIR and data_dir.is_dir()):
        shutil.rmtree(data_dir)
    elif data_dir.exists() and any(data_dir.iterdir()):
        raise SystemExit(f"{data_dir} is not empty and was not made by the demo: choose an empty --data-dir")
    data_dir.mkdir(parents=True, exist_ok=True)
    mark.write_text("made by `mmsr demo`, emptied by the next one\n")
    return data_dir


def run_demo(data_dir: Path, users: int = 12, per_user: int = 30, show: int = 3, *, echo=print,
             adapter: str = "", rerank_candidates: int = 20,
             sequential_epochs: int = SequentialSourceConfig.epochs) -> dict[str, dict]:
    """Two phases on one worker state. First the catalog and every other user's history, with the
    LLM stages off (the item-keyed co-occurrence and trending counts fill up in a minute or two);
    then the sequential source (SASRec) and EASE are trained on those histories, as ``mmsr train-retrieval``
    would (``sequential_epochs`` 0: none, and the lists blend the other sources only). Then the
    worker restarts with the default summarizer (``MMSR_SUMMARY_MODEL``) and the sequential model loaded, and ``users``
    users' first ``per_user`` interactions are replayed as a backfill: each gets recurrent
    summaries and, at the backfill's end, one list from the blended candidate stage, the blend
    ``mmsr eval-stream`` measures. With ``adapter`` the LoRA re-ranker re-ranks the top
    ``rerank_candidates`` (item captions stay off: a CPU captions 1,682 items slowly)."""
    from models.data import movielens
    from streams import replay as rp

    data_dir = fresh_demo_dir(Path(data_dir).resolve())
    base = Settings(data_dir=data_dir)
    broker = LocalKafka(data_dir / "kafka", base.kafka_version, base.kafka_home)
    echo("starting Apache Kafka (KRaft, 127.0.0.1) ...")
    info = broker.start(port=9092 if port_is_free(9092) else 0)
    worker = None
    try:
        web_port = free_port()
        common = dict(data_dir=data_dir, bootstrap_servers=info.bootstrap, web_port=web_port, caption_model="none")
        settings = Settings(**common, summary_model="none")
        for name, outcome in create_topics(settings).items():
            echo(f"  topic {name}: {outcome}")
        echo(f"starting the worker (web on 127.0.0.1:{web_port}) ...")
        worker = WorkerProcess(settings.to_env(), web_port, data_dir / "worker.log").start()
        catalog = rp.publish_movielens_items(info.bootstrap, settings.topic_items)
        echo(f"published {catalog} MovieLens items; embedding their titles and genres with all-MiniLM-L6-v2 ...")
        wait_until(lambda: worker.metric("items_applied_total") >= catalog, timeout=600, interval=1.0,
                   message="catalog embedded")
        everyone = rp.movielens_events()
        by_first_seen = list(dict.fromkeys(e["user_id"] for e in everyone))
        demo_users = set(by_first_seen[:users])  # the users rp.movielens_events(users) picks
        others = [e for e in everyone if e["user_id"] not in demo_users]
        echo(f"phase 1: {len(others)} interactions of the other {len(by_first_seen) - users} users (co-occurrence "
             "and trending counts) ...")
        rp.replay(info.bootstrap, settings.topic_interactions, others, backfill=False)
        progress(echo, "applied", lambda: worker.metric("events_applied_total"), len(others), timeout=1800)
        wait_until(lambda: worker.metric("pair_entries_applied_total") >= worker.metric("pair_entries_total"),
                   timeout=900, interval=1.0, message="item-keyed counts folded")
        worker.stop()
        retrieval_model = train_sequential(others, data_dir / "sequential", sequential_epochs, echo)

        settings = Settings(**common, summary_max_new_tokens=48, retrieval_model=retrieval_model,
                            recommender_model="smollm2-135m-instruct" if adapter else "none",
                            recommender_adapter=adapter, rerank_candidates=rerank_candidates)
        echo(f"phase 2: the worker restarts with {settings.summary_model} summarizing every "
             f"{settings.summary_block} interactions" + (f", re-ranking with the adapter in {adapter}" if adapter else
                                                          "; lists from the blended candidate stage") + " ...")
        worker = WorkerProcess(settings.to_env(), web_port, data_dir / "worker.log").start()
        events = rp.movielens_events(users, first_per_user=per_user)
        report = rp.replay(info.bootstrap, settings.topic_interactions, events, backfill=True)
        blocks = sum(n // settings.summary_block for n in _counts(events).values())
        echo(f"replayed {report.sent} interactions of {users} users (a backfill: one list per user at the end)")
        progress(echo, "summaries", lambda: worker.metric("summaries_generated_total"), blocks, timeout=1800)
        # every backfilled user is owed a list at the markers, phase 1's too; the demo shows its own
        lists = wait_until(lambda: _lists_if_complete(settings, demo_users), timeout=900, interval=1.0,
                           message="a list for every demo user")
        titles = {i["item_id"]: i["title"] for i in movielens.items()}
        for user_id in sorted(lists, key=int)[:show]:
            state = worker.get(f"/users/{user_id}")
            echo(f"\nuser {user_id}: {state['interaction_count']} interactions; last items:")
            for h in state["history"][-5:]:
                echo(f"    - {titles.get(h['item_id'], h['item_id'])}  (rated {h['value']:g})")
            echo(f"  preference summary v{state['summary_version']}: {state['summary']}")
            chosen = lists[user_id]
            echo(f"  top {len(chosen['items'])} ({chosen['strategy']}, {chosen['model']}):")
            for item in chosen["items"]:
                echo(f"   {item['rank']:>2}. {titles.get(item['item_id'], item['item_id'])}  [{item['score']:.3f}; "
                     f"{', '.join(item.get('sources', []))}]")
        echo(f"\nmetrics: {int(worker.metric('events_applied_total'))} events applied after the restart, "
             f"{int(worker.metric('summaries_total'))} summaries, "
             f"{int(worker.metric('recommendations_emitted_total'))} lists emitted, "
             f"{int(worker.metric('dead_letters_total'))} dead letters")
        return lists
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
        echo("stopped the worker and the broker")


def train_sequential(events: list[dict], out: Path, epochs: int, echo) -> str:
    """The sequential source and EASE trained on ``events`` into ``out``: the worker's ``retrieval_model``
    ("none" with no epochs). A few minutes on a 2-core CPU; the worker is stopped meanwhile."""
    if epochs <= 0:
        return "none"
    from models.candidates.sequential import train_into

    echo(f"training the sequential source (SASRec, {epochs} epochs) and EASE on phase 1's interactions ...")
    train_into(out, events, SequentialSourceConfig(epochs=epochs),
               until=events[-1]["event_time"] if events else None, echo=lambda line: echo(f"  {line}"))
    return str(out)


def progress(echo, what: str, value, total: int, timeout: float) -> None:
    """A line every few seconds until ``value()`` reaches ``total`` (the demo never goes silent)."""
    deadline, last_line = time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        done = value()
        if done >= total:
            echo(f"  {what}: {int(done)}/{total}")
            return
        if time.monotonic() - last_line >= 10:
            echo(f"  {what}: {int(done)}/{total} ...")
            last_line = time.monotonic()
        time.sleep(1.0)
    raise TimeoutError(f"{what}: {value()}/{total} after {timeout:.0f}s")


def _counts(events) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in events:
        out[e["user_id"]] = out.get(e["user_id"], 0) + 1
    return out


def _lists_if_complete(settings: Settings, users: set[str]):
    """The demo users' newest lists, once each of them has one that reflects all of their events."""
    lists = latest_by_user(settings.bootstrap_servers, settings.topic_recommendations)
    mine = {u: rec for u, rec in lists.items() if u in users and rec.get("summary_version", 0) > 0}
    return mine if len(mine) >= len(users) else None
