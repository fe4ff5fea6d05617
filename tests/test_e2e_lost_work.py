"""Faults that used to lose work or end it wrongly, injected into one real stack: a PostgreSQL and a Redis
of the test's own (own ports and folders: the machine's shared servers are never touched), a
`celery worker`, a driver process and the simulator.

- a killed pool process ends its run at once (the worker's main process hears of it);
- a run waiting for its target does not take a live run for dead just after a database outage;
- a database outage past the retry window writes the whole run document back, not only the levels;
- queued runs whose messages a Redis restart lost are sent again, once, and run once.

Bounds are shortened through the environment so each test takes seconds.
"""
import shutil
import signal
import time
from datetime import datetime

import psutil
import pytest

from benchmarks.simulator import running_simulator
from tests import e2e_support as e2e
from tests.prerequisites import require

pytestmark = pytest.mark.e2e

PG_PORT = 16441
REDIS_PORT = 16382
STALE_S = 6
DB_RETRY_S = 15
REQUEUE_AFTER_S = 6
FAST = {
    "EMBPERF_HEARTBEAT_S": "1",
    "EMBPERF_STALE_AFTER_S": str(STALE_S),
    "EMBPERF_SWEEP_INTERVAL_S": "1",
    "EMBPERF_SHUTDOWN_S": "10",
    "EMBPERF_NO_WORKER_AFTER_S": "1",
    "EMBPERF_DB_RETRY_S": str(DB_RETRY_S),
    "EMBPERF_REQUEUE_AFTER_S": str(REQUEUE_AFTER_S),
}
ENDED = ("succeeded", "failed", "cancelled", "interrupted")


def ended(state: dict) -> bool:
    return state["status"] in ENDED


def measuring_level(index: int):
    return lambda s: s["status"] in ENDED or (s["phase"] == "measure" and s["level_index"] == index)


class Stack:
    """The module's processes; `worker` is the one running now (a test may stop and start it)."""

    def __init__(self, tmp, sim, pg, redis):
        self.tmp, self.sim, self.pg, self.redis = tmp, sim, pg, redis
        self.queue = e2e.unique_name("lost")
        self.env = e2e.base_env(tmp, database_url=pg.url, broker_url=redis.url, extra=FAST)
        e2e.migrate(self.env)
        # The web side judges a lost message sooner than the worker's own reconciler, so a test can
        # show `enqueue/` sending a run again before the worker would have.
        self.driver = e2e.Driver({**self.env, "EMBPERF_REQUEUE_AFTER_S": "1"}, tmp / "driver.log")
        self.ids = self.driver.call("setup", sim_url=sim.base_url, queue=self.queue)
        self.workers: list[e2e.Worker] = []
        self.worker = self.start_worker()

    def start_worker(self) -> e2e.Worker:
        worker = e2e.Worker(self.env, self.queue, self.tmp / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        worker.wait_ready()
        self.worker = worker
        return worker

    def target(self, name: str) -> int:
        return self.driver.call("target", name=name, base_urls=[self.sim.base_url], model_name="sim-embed",
                                engine="simulator", queue=self.queue)["target"]

    def start(self, target: int, plan: str, label: str) -> int:
        return self.driver.call("start", target=target, plan=self.ids[plan], label=label)["run"]

    def wait(self, run_id: int, predicate, timeout: float) -> dict:
        return e2e.wait_for(self.driver, run_id, predicate, timeout=timeout, worker=self.worker)

    def logs(self) -> str:
        return "".join(worker.log() for worker in self.workers)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.driver.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require(e2e.own_postgres_problem())
    require(None if shutil.which("redis-server") else "redis-server is not installed")
    tmp = tmp_path_factory.mktemp("lost_work")
    pg = e2e.PostgresServer(PG_PORT)
    redis = e2e.RedisServer(REDIS_PORT, tmp / "redis.log")
    parts = None
    try:
        with running_simulator() as sim:
            parts = Stack(tmp, sim, pg, redis)
            yield parts
    finally:
        if parts is not None:
            parts.stop()
        redis.stop()
        pg.destroy()


def pool_process_measuring(worker: e2e.Worker, sim_port: int) -> psutil.Process:
    """The worker's pool process with connections open to the simulator: the one measuring the run."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for child in psutil.Process(worker.proc.pid).children():
            try:
                if any(conn.raddr and conn.raddr[1] == sim_port for conn in child.net_connections(kind="tcp")):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.1)
    raise AssertionError("no pool process is connected to the simulator")


def test_a_killed_pool_process_ends_its_run_at_once_and_nothing_runs_twice(stack):
    target = stack.target("pool kill")
    run_id = stack.start(target, "steps", "pool kill")
    stack.wait(run_id, measuring_level(1), timeout=60)
    child = pool_process_measuring(stack.worker, int(stack.sim.base_url.rsplit(":", 1)[1].split("/")[0]))
    child.send_signal(signal.SIGKILL)  # what the kernel's out-of-memory killer does
    state = stack.wait(run_id, ended, timeout=STALE_S * 4)
    assert state["status"] == "interrupted", state
    node = stack.worker.node.split("@")[0]
    assert f"The worker process measuring this run on {node}" in state["reason"], state["reason"]
    assert "died" in state["reason"] and "stopped reporting" not in state["reason"]
    # The level finished before the kill is kept, and stays the only one: the message is not delivered again.
    assert [(level["concurrency"], level["status"]) for level in state["levels"]] == [(1, "completed")]
    time.sleep(3)
    again = stack.driver.call("run", run=run_id)
    assert again["status"] == "interrupted" and len(again["levels"]) == 1
    # The worker's main process forked a new pool process and keeps consuming.
    assert stack.worker.proc.poll() is None
    after = stack.start(target, "short", "after the kill")
    assert stack.wait(after, ended, timeout=60)["status"] == "succeeded"


def test_a_waiting_run_does_not_take_a_live_run_for_dead_just_after_a_database_outage(stack):
    target = stack.target("outage")
    live = stack.start(target, "steps", "live through the outage")
    stack.wait(live, measuring_level(1), timeout=60)
    waiting = stack.start(target, "short", "waits for the target")
    stack.wait(waiting, lambda s: "Waiting for run" in s["reason"], timeout=30)
    stack.pg.stop()
    time.sleep(STALE_S + 4)  # every heartbeat is older than the stale bound when the database returns
    stack.pg.start()
    first = stack.wait(live, ended, timeout=90)
    second = stack.wait(waiting, ended, timeout=60)
    assert first["status"] == "succeeded", (first["reason"], stack.worker.log()[-3000:])
    assert [level["concurrency"] for level in first["levels"]] == [1, 2, 4]
    assert all(level["status"] == "completed" for level in first["levels"])
    assert second["status"] == "succeeded", second
    # The waiting run started only once the live one had ended: the target was never measured twice at once.
    assert datetime.fromisoformat(second["started"]) >= datetime.fromisoformat(first["finished"])
    assert "stopped reporting" not in stack.logs()


def test_a_database_outage_past_the_retry_window_writes_the_whole_run_back(stack):
    target = stack.target("long outage")
    run_id = stack.start(target, "steps", "long outage")
    stack.wait(run_id, measuring_level(1), timeout=60)
    stack.pg.stop()
    time.sleep(DB_RETRY_S + 10)  # past the retry window and the final try: the worker saves a file
    files = list((stack.tmp / "unsaved").glob(f"run-{run_id}-*.json"))
    assert len(files) == 1, stack.worker.log()[-3000:]
    stack.pg.start()
    state = stack.wait(run_id, lambda s: ended(s) and "written back" in s["reason"], timeout=60)
    assert state["status"] == "failed"
    assert "unreachable for over" in state["reason"] and str(files[0]) in state["reason"]
    assert "writes them here once" not in state["reason"]
    assert state["phase"] == "done"
    # Level 0 was stored before the outage; level 1 finished during it and came back from the file.
    loads = [(level["concurrency"], level["status"]) for level in state["levels"]]
    assert loads[:2] == [(1, "completed"), (2, "completed")], loads
    assert len(loads) <= 3 and len({load for load, _ in loads}) == len(loads)
    doc = stack.driver.call("document", run=run_id)
    document = doc["document"]
    assert document["summary"], "the summary came back"
    for section in ("probe", "client", "inputs"):
        assert document.get(section), f"{section} came back"
    assert doc["client_version"]
    # Written once, and the run is not measured again.
    time.sleep(3)
    assert len(stack.driver.call("run", run=run_id)["levels"]) == len(loads)


def test_queued_runs_lost_in_a_redis_restart_are_sent_again_once_and_run_once(stack):
    targets = [stack.target(f"queued {n}") for n in range(3)]
    stack.worker.stop()
    runs = [stack.start(target, "short", f"queued {n}") for n, target in enumerate(targets)]
    stack.redis.kill()  # no persistence: the queued messages are gone
    stack.redis.start()
    # With no worker to judge by, enqueue/ does not claim a worker took it; it says the run is still queued.
    refused = stack.driver.call("api", method="POST", path=f"/api/v1/runs/{runs[2]}/enqueue/")
    assert refused["status"] == 409 and "is queued" in refused["json"]["detail"], refused
    assert "already taken" not in refused["json"]["detail"]
    worker = stack.start_worker()
    time.sleep(2.5)  # the idle worker has reported itself free for over the web side's bound
    sent = stack.driver.call("api", method="POST", path=f"/api/v1/runs/{runs[2]}/enqueue/")
    assert sent["status"] == 200, sent
    states = [stack.wait(run_id, ended, timeout=REQUEUE_AFTER_S * 3 + 60) for run_id in runs]
    assert [state["status"] for state in states] == ["succeeded"] * 3, states
    for run_id, state in zip(runs, states, strict=True):
        assert stack.driver.call("document", run=run_id)["resent_at"], f"run {run_id} was sent again"
        assert [level["concurrency"] for level in state["levels"]] == [1, 2]
    log = worker.log()
    assert log.count("The broker lost this run's message") >= 2, log[-3000:]
    # Each ran once: one claim per run, and no run was failed for a second loss.
    for run_id in runs:
        assert log.count(f"run {run_id}: succeeded") == 1, log[-3000:]
    assert "lost this run's message twice" not in log


def test_a_run_waiting_for_its_target_when_redis_restarts_is_sent_again_once_the_target_is_free(stack):
    target = stack.target("waiting through restart")
    first = stack.start(target, "steps", "measures")
    stack.wait(first, measuring_level(0), timeout=60)
    second = stack.start(target, "short", "waits")
    stack.wait(second, lambda s: "Waiting for run" in s["reason"], timeout=30)
    stack.redis.kill()  # the waiting run's countdown lived in the worker and in Redis: both are dropped
    time.sleep(1)
    stack.redis.start()
    one = stack.wait(first, ended, timeout=90)
    assert one["status"] == "succeeded", one
    two = stack.wait(second, ended, timeout=REQUEUE_AFTER_S * 3 + 60)
    assert two["status"] == "succeeded", (two, stack.worker.log()[-3000:])
    assert datetime.fromisoformat(two["started"]) >= datetime.fromisoformat(one["finished"])
    assert [level["concurrency"] for level in two["levels"]] == [1, 2]
    assert stack.driver.call("document", run=second)["resent_at"], "its lost message was sent again"
    assert stack.worker.log().count(f"run {second}: succeeded") == 1
    assert stack.worker.proc.poll() is None and "Unrecoverable error" not in stack.worker.log()
