"""A seeded soak under faults: three state workers and one llm worker on 8 partitions, a steady
replay of 50,000 interactions, kill -9 of a worker at seeded moments (each restarted at once) and
one stop and start of the broker. At the end the state is that of one run without faults.

The seed is printed, and taken from MMSR_SOAK_SEED when set, so a failing run can be repeated;
a failure prints it with the fault plan and every worker's /health. ``MMSR_SOAK_RUNS=10`` runs it
ten times in a row, with seeds seed..seed+9.
"""
from __future__ import annotations

import os
import random
import threading
import time

import pytest

from models import registry
from streams.kafka.client import ItemProducer, read_all
from streams.kafka.launcher import LocalKafka
from streams.replay import replay
from tests.conftest import make_env, wait_until
from tests.integration import helpers

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

ITEMS, USERS, EVENTS, FRESH = 60, 500, 50_000, 3_000
RATE = 1_000  # events per second: a steady replay of 50 s
KILLS = 5
# exact item-keyed sums (no pruning, whole weights); a short session timeout, so the group moves a
# killed worker's partitions in seconds; SmolLM2 summarizes with short limits on the llm worker
SETTINGS = {"user_partitions": 8, "cooc_window": 5, "cooc_neighbours": 1000, "cooc_decay": 1.0,
            "session_timeout": 6.0, "debounce_seconds": 0.2, "summary_model": registry.SMOLLM2,
            "summary_max_new_tokens": 8, "caption_model": "none", "torch_threads": 1}
FIRST_SEED = int(os.environ.get("MMSR_SOAK_SEED", str(int(time.time()) % 100_000)))
RUNS = int(os.environ.get("MMSR_SOAK_RUNS", "1"))


def log(seed: int) -> list[dict]:
    """EVENTS interactions in time order; all but the last FRESH are older than the freshness cut."""
    return helpers.aged_log(EVENTS, FRESH, USERS, ITEMS, seed)


class Supervisor:
    """Restarts a worker that exits, as the compose file's ``restart: on-failure`` does, and keeps
    why: a worker that starts while the broker is down cannot bootstrap and exits 1, which a
    supervisor answers; any other exit fails the soak."""

    EXPECTED = ("Unable to bootstrap",)

    def __init__(self, workers):
        self.workers, self.exits, self.lock = workers, [], threading.Lock()
        self.offsets = {id(w): 0 for w in workers}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def start(self, worker) -> None:
        with self.lock:
            self.offsets[id(worker)] = worker.log.stat().st_size if worker.log.exists() else 0
            worker.spawn()

    def kill_and_restart(self, worker) -> None:
        with self.lock:
            worker.kill9()
            self.offsets[id(worker)] = worker.log.stat().st_size
            worker.spawn()

    def watch(self) -> None:
        while not self.stopping.wait(0.5):
            with self.lock:
                for n, worker in enumerate(self.workers):
                    if worker.proc is not None and worker.proc.poll() is not None:
                        with open(worker.log, "rb") as log:
                            log.seek(self.offsets[id(worker)])
                            lines = log.read().decode(errors="replace").splitlines()
                        reason = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else "")
                        self.exits.append((n, worker.proc.returncode, reason.strip()[-300:]))
                        self.offsets[id(worker)] = worker.log.stat().st_size
                        worker.spawn()

    def unexpected(self) -> list:
        return [e for e in self.exits if not any(text in e[2] for text in self.EXPECTED)]


def faults(seed: int, span: float) -> list[tuple[float, str, int]]:
    """(seconds into the replay, what, which worker): KILLS kills at least 5 s apart, and one
    broker restart between two of them."""
    rng = random.Random(seed)
    moments = sorted(rng.uniform(3.0, span - 3.0) for _ in range(KILLS))
    for n in range(1, len(moments)):
        moments[n] = max(moments[n], moments[n - 1] + 5.0)
    plan = [(at, "kill", rng.randrange(4)) for at in moments]
    between = rng.randrange(1, KILLS)
    plan.append(((moments[between - 1] + moments[between]) / 2, "broker", -1))
    return sorted(plan)


@pytest.mark.parametrize("seed", [FIRST_SEED + n for n in range(RUNS)])
def test_a_soak_under_kills_and_a_broker_restart_ends_in_the_state_of_one_clean_run(tmp_path, worker_factory, seed):
    print(f"soak seed {seed} (MMSR_SOAK_SEED={seed} repeats it)")
    broker = LocalKafka(tmp_path / "own-broker")  # its own: it is stopped and started again
    info = broker.start(port=0, timeout=120)
    workers, supervisor = [], None
    try:
        env = make_env(info.bootstrap, tmp_path, **SETTINGS)
        workers = [worker_factory(env, peer=n > 0) for n in range(4)]
        for n, worker in enumerate(workers):
            worker.env = {**worker.env, "MMSR_ROLE": "llm" if n == 3 else "state"}
        supervisor = Supervisor(workers)
        for worker in workers:
            supervisor.start(worker)
        supervisor.thread.start()
        for worker in workers:
            wait_until(lambda w=worker: healthy(w), timeout=300, message=f"{worker.url} healthy")
        with ItemProducer(env.bootstrap_servers, env.topic_items) as producer:
            for item in helpers.catalog(ITEMS):
                producer.send(item)
        wait_until(lambda: all(w.metric("catalog_items") >= ITEMS for w in workers[:3]), timeout=120,
                   message="catalog")
        events = log(seed)
        want_users = helpers.expected_states(events, env.settings)
        want_items, _ = helpers.expected_neighbours(events, env.settings)
        plan = faults(seed, EVENTS / RATE)
        done = []
        sender = threading.Thread(target=lambda: done.append(replay(
            env.bootstrap_servers, env.topic_interactions, events, rate=RATE, progress=False,
            config={"log_level": 0})))  # the outage would print a connection error a second
        started = time.monotonic()
        sender.start()  # the replay's idempotent producer retries through the broker's outage
        for at, what, which in plan:
            time.sleep(max(0.0, started + at - time.monotonic()))
            if what == "kill":
                supervisor.kill_and_restart(workers[which])  # restarted at once, as a supervisor would
            else:
                broker.stop()
                time.sleep(3.0)
                broker.start(port=info.port, controller_port=info.controller_port, timeout=120)
        sender.join(timeout=600)
        assert done and not sender.is_alive(), "the replay did not finish"
        for worker in workers:
            wait_until(lambda w=worker: healthy(w), timeout=300, message=f"{worker.url} healthy")
        check_the_end(env, workers, events, want_users, want_items)
        assert supervisor.unexpected() == [], f"workers exited unexpectedly: {supervisor.unexpected()}"
        print(f"soak seed {seed}: {len(plan)} faults, {len(supervisor.exits)} exits restarted by the supervisor "
              f"{supervisor.exits}")
    except BaseException:
        health = [healthy(w, full=True) for w in workers]
        print(f"soak seed {seed} failed; fault plan {plan if 'plan' in locals() else None}; exits "
              f"{supervisor.exits if supervisor else None}; health {health}")
        raise
    finally:
        if supervisor is not None:
            supervisor.stopping.set()
            supervisor.thread.join()
        for worker in workers:
            worker.stop()
        broker.stop()


def healthy(worker, full: bool = False):
    try:
        health = worker.get("/health") or {}
    except OSError as exc:
        return f"no answer ({exc})" if full else False
    return health if full else health.get("status") == "ok"


def check_the_end(env, workers, events, want_users, want_items) -> None:
    state = workers[0]
    short: dict = {}

    def complete():
        got = {u: user_view(state, u) for u in want_users}
        short.clear()
        short.update({u: (got[u] and got[u]["interaction_count"], want["interaction_count"])
                      for u, want in want_users.items() if not got[u] or got[u] != want})
        return None if short else got

    try:
        wait_until(complete, timeout=300, interval=3.0, message="every user's state")
    except AssertionError:
        raise AssertionError(f"{len(short)} users differ from one clean run (count got, want): "
                             f"{dict(list(short.items())[:10])}") from None
    helpers.wait_for_neighbours(state, ITEMS, want_items, timeout=180, message="co-occurrence records exact")
    behind: dict = {}

    def lists():
        newest, missing = helpers.lists_behind(env, want_users)
        behind.clear()
        behind.update(missing)
        return None if behind else newest

    try:
        wait_until(lists, timeout=240, interval=5.0, message="every user's newest list")
    except AssertionError:
        raise AssertionError(f"{len(behind)} users' newest lists miss events (got, want): "
                             f"{dict(list(behind.items())[:10])}") from None
    dead = read_all(env.bootstrap_servers, env.topic_dead_letters, timeout=10, idle=2)
    assert dead == [], f"{len(dead)} dead letters where a clean run has none: {[d.value()[:300] for d in dead[:3]]}"


def user_view(worker, user: str) -> dict | None:
    state = worker.get(f"/users/{user}")
    if not state or "interaction_count" not in state:
        return None  # 404, or 503 while a rebalance runs
    return {k: state[k] for k in ("interaction_count", "history", "seen")}
