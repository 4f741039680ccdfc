"""`make demo`: a local broker, the worker, a MovieLens-100K slice, top-10 lists with titles."""
from __future__ import annotations

from pathlib import Path

from streams.kafka.admin import create_topics
from streams.kafka.client import latest_by_user
from streams.kafka.launcher import LocalKafka, free_port, port_is_free
from streams.harness.process import WorkerProcess, wait_until
from streams.settings import Settings


def run_demo(data_dir: Path, users: int = 12, per_user: int = 30, show: int = 3, echo=print,
             adapter: str = "", rerank_candidates: int = 20) -> dict[str, dict]:
    """Summaries and re-ranking run with SmolLM2-135M on the CPU (short summaries: 48 new tokens;
    20 candidates re-ranked per list); item captions are off here, since captioning all 1,682
    items takes a CPU many minutes (MMSR_CAPTION_MODEL turns them on). Without an adapter the
    re-ranker is the zero-shot base model."""
    from models.data import movielens
    from streams import replay as rp

    data_dir = Path(data_dir).resolve()
    base = Settings(data_dir=data_dir)
    broker = LocalKafka(data_dir / "kafka", base.kafka_version, base.kafka_home)
    echo("starting Apache Kafka (KRaft, 127.0.0.1) ...")
    info = broker.start(port=9092 if port_is_free(9092) else 0)
    worker = None
    try:
        web_port = free_port()
        settings = Settings(data_dir=data_dir, bootstrap_servers=info.bootstrap, web_port=web_port,
                            caption_model="none", summary_max_new_tokens=48, recommender_model="smollm2-135m-instruct",
                            recommender_adapter=adapter, rerank_candidates=rerank_candidates)
        echo(f"re-ranker: {settings.recommender_model} with "
             + (f"the adapter in {adapter}" if adapter else "no adapter (zero-shot; `mmsr train` makes one)"))
        for name, outcome in create_topics(settings).items():
            echo(f"  topic {name}: {outcome}")
        echo(f"starting the worker (web on 127.0.0.1:{web_port}; first run converts SmolLM2 once) ...")
        worker = WorkerProcess(settings.to_env(), web_port, data_dir / "worker.log").start()
        catalog = rp.publish_movielens_items(info.bootstrap, settings.topic_items)
        echo(f"published {catalog} MovieLens items; embedding them with all-MiniLM-L6-v2 ...")
        wait_until(lambda: worker.metric("items_applied_total") >= catalog, timeout=600, interval=1.0,
                   message="catalog embedded")
        events = rp.movielens_events(users, first_per_user=per_user)
        report = rp.replay(info.bootstrap, settings.topic_interactions, events, backfill=True)
        echo(f"replayed {report.sent} interactions of {users} users (backfill: one list per user at the end);"
             f" summarizing every {settings.summary_block} interactions with {settings.summary_model} ...")
        lists = wait_until(lambda: _lists_if_complete(settings, users), timeout=900, interval=1.0,
                           message="a list for every user")
        titles = {i["item_id"]: i["title"] for i in movielens.items()}
        for user_id in sorted(lists, key=int)[:show]:
            state = worker.get(f"/users/{user_id}")
            echo(f"\nuser {user_id}: {state['interaction_count']} interactions; last items:")
            for h in state["history"][-5:]:
                echo(f"    - {titles.get(h['item_id'], h['item_id'])}  (rated {h['value']:g})")
            echo(f"  preference summary v{state['summary_version']}: {state['summary']}")
            chosen = lists[user_id]
            echo(f"  top {len(chosen['items'])} ({chosen['strategy']}, {chosen['model']}; "
                 f"{chosen.get('rerank', {}).get('candidates', 0)} candidates re-ranked):")
            for item in lists[user_id]["items"]:
                echo(f"   {item['rank']:>2}. {titles.get(item['item_id'], item['item_id'])}  [{item['score']:.3f}]")
        echo(f"\nmetrics: {int(worker.metric('events_applied_total'))} events applied, "
             f"{int(worker.metric('summaries_total'))} summaries, "
             f"{int(worker.metric('recommendations_emitted_total'))} lists emitted, "
             f"{int(worker.metric('dead_letters_total'))} dead letters")
        return lists
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
        echo("stopped the worker and the broker")


def _lists_if_complete(settings: Settings, users: int):
    lists = latest_by_user(settings.bootstrap_servers, settings.topic_recommendations)
    return lists if len(lists) >= users else None
