"""Faults injected into a real stack (a `celery worker` process, a driver process, the simulator):
the database drops its connections, the worker is stopped with SIGTERM or killed with -9, Redis
restarts, the file-system broker's folder is removed. Each run still ends, with its levels kept,
and the worker keeps consuming.

Bounds are shortened through the environment (heartbeat 1 s, silent after 6 s, sweep every 1 s) so
each test takes seconds, not minutes. PostgreSQL tests use a database of their own and terminate
only its backends; the Redis test restarts a redis-server of its own on port 16381.
"""
import contextlib
import os
import shutil
import signal
import time
from datetime import datetime

import pytest

from benchmarks.simulator import running_simulator
from tests import e2e_support as e2e
from tests.prerequisites import require

pytestmark = pytest.mark.e2e

FAST = {
    "EMBPERF_HEARTBEAT_S": "1",
    "EMBPERF_STALE_AFTER_S": "6",
    "EMBPERF_SWEEP_INTERVAL_S": "1",
    "EMBPERF_SHUTDOWN_S": "10",
    "EMBPERF_NO_WORKER_AFTER_S": "1",
    "EMBPERF_DB_RETRY_S": "60",
}
REDIS_PORT = 16381
ENDED = ("succeeded", "failed", "cancelled", "interrupted")


@pytest.fixture(scope="module")
def simulator():
    with running_simulator() as sim:
        yield sim


@contextlib.contextmanager
def stack(tmp_path, simulator, *, postgres: bool = False, broker_url: str = "filesystem://"):
    """A migrated database, a worker on a unique queue and a driver; yields a dict of the parts."""
    queue = e2e.unique_name("faults")
    cleanups = []
    if postgres:
        require(e2e.postgres_available())
        db_name = e2e.unique_name("embperf_faults")
        database_url = e2e.create_postgres_database(db_name)
        cleanups.append(lambda: e2e.drop_postgres_database(db_name))
    else:
        db_name = None
        database_url = f"sqlite:///{tmp_path / 'faults.sqlite3'}"
    env = e2e.base_env(tmp_path, database_url=database_url, broker_url=broker_url, extra=FAST)
    parts = {"env": env, "queue": queue, "db_name": db_name, "workers": [], "tmp": tmp_path}
    driver = None
    try:
        e2e.migrate(env)
        driver = e2e.Driver(env, tmp_path / "driver.log")
        parts["driver"] = driver
        parts["ids"] = driver.call("setup", sim_url=simulator.base_url, queue=queue)
        parts["start_worker"] = lambda name="worker": start_worker(parts, name)
        yield parts
    finally:
        for worker in parts["workers"]:
            worker.stop()
        if driver is not None:
            driver.stop()
        for cleanup in reversed(cleanups):
            cleanup()


def start_worker(parts: dict, name: str) -> e2e.Worker:
    worker = e2e.Worker(parts["env"], parts["queue"], parts["tmp"] / f"{name}-{len(parts['workers'])}.log")
    parts["workers"].append(worker)
    worker.wait_ready()
    return worker


def measuring_level(index: int):
    return lambda s: s["status"] in ENDED or (s["phase"] == "measure" and s["level_index"] == index)


def ended(state: dict) -> bool:
    return state["status"] in ENDED


def test_postgres_connections_dropped_mid_level_the_run_completes_with_every_level(tmp_path, simulator):
    with stack(tmp_path, simulator, postgres=True) as s:
        driver, ids = s["driver"], s["ids"]
        worker = s["start_worker"]()
        keep = driver.call("backend_pid")["pid"]
        run_id = driver.call("start", target=ids["target"], plan=ids["steps"], label="pg drop")["run"]
        terminated = 0
        for level in (0, 1):
            e2e.wait_for(driver, run_id, measuring_level(level), timeout=60, worker=worker)
            time.sleep(1.0)
            terminated += e2e.terminate_backends(s["db_name"], keep_pid=keep)
        assert terminated >= 2, "the worker's connections were found and terminated"
        state = e2e.wait_for(driver, run_id, ended, timeout=90, worker=worker)
        assert state["status"] == "succeeded", (state["reason"], worker.log()[-3000:])
        assert [level["concurrency"] for level in state["levels"]] == [1, 2, 4]
        assert all(level["status"] == "completed" and level["requests_ok"] > 0 for level in state["levels"])
        log = worker.log()
        # The recorder noticed each drop, and said so once per streak, not once per try.
        lost = log.count("lost the database")
        assert 1 <= lost <= 2 * 2 * 2, log[-3000:]
        assert log.count("WARNING") <= 40, log[-3000:]
        assert log.count("Traceback") == 0, log[-3000:]
        # Connections dropped while the worker is idle: its next run starts all the same (Celery's Django
        # fix-up opens a fresh connection for each task).
        time.sleep(1.0)
        e2e.terminate_backends(s["db_name"], keep_pid=keep)
        # Cancel works after the database came back.
        second = driver.call("start", target=ids["target"], plan=ids["long"], label="after drop")["run"]
        e2e.wait_for(driver, second, measuring_level(0), timeout=60, worker=worker)
        e2e.terminate_backends(s["db_name"], keep_pid=keep)
        time.sleep(1.0)
        driver.call("cancel", run=second)
        assert e2e.wait_for(driver, second, ended, timeout=20, worker=worker)["status"] == "cancelled"


@pytest.mark.parametrize("to", ["group", "main process"])
def test_sigterm_to_the_worker_mid_level_interrupts_the_run_and_the_worker_exits(tmp_path, simulator, to):
    with stack(tmp_path, simulator) as s:
        driver, ids = s["driver"], s["ids"]
        worker = s["start_worker"]()
        run_id = driver.call("start", target=ids["target"], plan=ids["steps"], label="sigterm")["run"]
        e2e.wait_for(driver, run_id, measuring_level(1), timeout=60, worker=worker)
        time.sleep(1.0)
        sent = time.monotonic()
        # systemd's default and `docker stop` signal the whole group; KillMode=mixed only the main process.
        if to == "group":
            os.killpg(worker.proc.pid, signal.SIGTERM)
        else:
            worker.proc.send_signal(signal.SIGTERM)
        worker.proc.wait(30)
        took = time.monotonic() - sent
        assert took < float(FAST["EMBPERF_SHUTDOWN_S"]), f"the worker took {took:.1f} s to exit"
        assert "did not stop within" not in worker.log()
        state = driver.call("run", run=run_id)
        assert state["status"] == "interrupted", (state, worker.log()[-3000:])
        assert "SIGTERM" in state["reason"]
        # The finished level is kept; the one cut short is kept too, marked cancelled.
        assert state["levels"][0]["concurrency"] == 1 and state["levels"][0]["status"] == "completed"
        assert all(level["status"] in ("completed", "cancelled") for level in state["levels"])
        assert len(state["levels"]) <= 2


def test_sigterm_to_the_pool_process_interrupts_the_run_and_the_worker_keeps_consuming(tmp_path, simulator):
    import psutil

    with stack(tmp_path, simulator) as s:
        driver, ids = s["driver"], s["ids"]
        worker = s["start_worker"]()
        run_id = driver.call("start", target=ids["target"], plan=ids["long"], label="sigterm child")["run"]
        e2e.wait_for(driver, run_id, measuring_level(0), timeout=60, worker=worker)
        # The pool process measuring the run is the one whose children include the load or is busiest.
        children = psutil.Process(worker.proc.pid).children()
        for child in children:
            child.send_signal(signal.SIGTERM)
        state = e2e.wait_for(driver, run_id, ended, timeout=15, worker=worker)
        assert state["status"] == "interrupted" and "SIGTERM" in state["reason"], state
        assert worker.proc.poll() is None
        again = driver.call("start", target=ids["target"], plan=ids["short"], label="after")["run"]
        assert e2e.wait_for(driver, again, ended, timeout=60, worker=worker)["status"] == "succeeded"


def test_killed_worker_is_found_by_its_silence_and_the_target_is_free_again(tmp_path, simulator):
    with stack(tmp_path, simulator) as s:
        driver, ids = s["driver"], s["ids"]
        worker = s["start_worker"]("first")
        run_id = driver.call("start", target=ids["target"], plan=ids["long"], label="killed")["run"]
        e2e.wait_for(driver, run_id, measuring_level(0), timeout=60, worker=worker)
        time.sleep(1.5)
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)
        killed_at = time.monotonic()
        before = driver.call("run", run=run_id)
        assert before["status"] == "running"
        # Another worker, under another node name, finds the silent run on its own timer.
        replacement = s["start_worker"]("second")
        state = e2e.wait_for(driver, run_id, ended, timeout=60, worker=replacement)
        assert time.monotonic() - killed_at < 60
        assert state["status"] == "interrupted", state
        assert worker.node.split("@")[0] in state["reason"] and "stopped reporting" in state["reason"]
        assert f"marked runs [{run_id}] interrupted" in replacement.log()
        # Its finish time is when it was last heard from, not when the death was noticed.
        assert datetime.fromisoformat(state["finished"]) == datetime.fromisoformat(state["heartbeat"])
        # The target is free again: its next run starts and completes.
        next_run = driver.call("start", target=ids["target"], plan=ids["short"], label="next")["run"]
        nxt = e2e.wait_for(driver, next_run, ended, timeout=60, worker=replacement)
        assert nxt["status"] == "succeeded", nxt


def test_cancel_of_a_run_whose_worker_died_ends_it_at_once(tmp_path, simulator):
    with stack(tmp_path, simulator) as s:
        driver, ids = s["driver"], s["ids"]
        worker = s["start_worker"]()
        run_id = driver.call("start", target=ids["target"], plan=ids["long"], label="dead cancel")["run"]
        e2e.wait_for(driver, run_id, measuring_level(0), timeout=60, worker=worker)
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)
        time.sleep(float(FAST["EMBPERF_STALE_AFTER_S"]) + 1)
        progress = driver.call("progress", run=run_id)
        assert progress["status"] == "running" and progress["worker_silent"]
        assert progress["heartbeat_age_s"] > float(FAST["EMBPERF_STALE_AFTER_S"])
        page = driver.call("page", run=run_id)["html"]
        assert "Last heard" in page and "worker silent" in page
        answer = driver.call("press_cancel", run=run_id)
        assert answer["status"] == 200
        assert "stops within a few seconds" not in answer["html"]
        assert "ended at once" in answer["html"]
        state = driver.call("run", run=run_id)
        assert state["status"] == "cancelled" and "last heard from" in state["reason"], state


def test_redis_restart_the_worker_reconnects_and_keeps_consuming(tmp_path, simulator):
    require(None if shutil.which("redis-server") else "redis-server is not installed")
    redis = e2e.RedisServer(REDIS_PORT, tmp_path / "redis.log")
    try:
        with stack(tmp_path, simulator, broker_url=redis.url) as s:
            driver, ids = s["driver"], s["ids"]
            worker = s["start_worker"]()
            run_id = driver.call("start", target=ids["target"], plan=ids["long"], label="redis restart")["run"]
            e2e.wait_for(driver, run_id, measuring_level(0), timeout=60, worker=worker)
            redis.kill()
            time.sleep(2)
            redis.start()
            # The running sweep carries on and still obeys a cancel; the worker takes new runs.
            driver.call("cancel", run=run_id)
            assert e2e.wait_for(driver, run_id, ended, timeout=20, worker=worker)["status"] == "cancelled"
            after = driver.call("start", target=ids["target"], plan=ids["short"], label="after restart")["run"]
            state = e2e.wait_for(driver, after, ended, timeout=60, worker=worker)
            assert state["status"] == "succeeded", (state, worker.log()[-3000:])
            assert worker.proc.poll() is None
            assert "Unrecoverable error" not in worker.log()
    finally:
        redis.stop()


def test_removed_broker_folder_is_recreated_and_the_worker_keeps_consuming(tmp_path, simulator):
    with stack(tmp_path, simulator) as s:
        driver, ids = s["driver"], s["ids"]
        worker = s["start_worker"]()
        shutil.rmtree(tmp_path / "broker")
        time.sleep(1.0)
        run_id = driver.call("start", target=ids["target"], plan=ids["short"], label="no folder")["run"]
        state = e2e.wait_for(driver, run_id, ended, timeout=60, worker=worker)
        assert state["status"] == "succeeded", (state, worker.log()[-3000:])
        assert worker.proc.poll() is None
        assert "Unrecoverable error" not in worker.log()
        # An idle worker stopped with SIGTERM to its group exits by itself, within the bound.
        sent = time.monotonic()
        os.killpg(worker.proc.pid, signal.SIGTERM)
        worker.proc.wait(30)
        assert time.monotonic() - sent < float(FAST["EMBPERF_SHUTDOWN_S"])
        assert worker.proc.returncode == 0 and "did not stop within" not in worker.log()


def test_a_run_queued_where_no_worker_listens_says_so(tmp_path, simulator):
    with stack(tmp_path, simulator) as s:
        driver, ids = s["driver"], s["ids"]
        run_id = driver.call("start", target=ids["target"], plan=ids["short"], label="nobody")["run"]
        time.sleep(float(FAST["EMBPERF_NO_WORKER_AFTER_S"]) + 0.5)
        note = f"No worker is listening on queue {s['queue']}"
        assert note in driver.call("progress", run=run_id)["waiting_note"]
        assert note in driver.call("page", run=run_id)["html"]
        worker = s["start_worker"]()
        state = e2e.wait_for(driver, run_id, ended, timeout=60, worker=worker)
        assert state["status"] == "succeeded"
