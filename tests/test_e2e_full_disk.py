"""A full disk mid-run, on real processes: the data folder (SQLite's database, unsaved/) on a 20 MB tmpfs
of the test's own, filled while a sweep measures; a Redis of the test's own as the broker (it is not on
that disk), a `celery worker`, a driver and the simulator.

Levels measured while the disk is full wait in memory; when the database stays full past the retry
window and the file under unsaved/ cannot be written either, the worker keeps trying both; once space
is free, everything measured is stored, and the run's reason names the full disk. Meanwhile the API
answers a JSON 503 ("the portal's storage is full") and reads succeed (the token's last-used write is
bookkeeping). Skipped, with the reason, where this machine does not let the test mount a tmpfs.
"""
import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks.simulator import running_simulator
from tests import e2e_support as e2e
from tests.prerequisites import require

pytestmark = pytest.mark.e2e

REDIS_PORT = 16383
DB_RETRY_S = 8
FAST = {
    "EMBPERF_HEARTBEAT_S": "1",
    "EMBPERF_STALE_AFTER_S": "10",
    "EMBPERF_SWEEP_INTERVAL_S": "1",
    "EMBPERF_SHUTDOWN_S": "10",
    "EMBPERF_DB_RETRY_S": str(DB_RETRY_S),
}
ENDED = ("succeeded", "failed", "cancelled", "interrupted")


def mount_tmpfs(folder: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` on `folder`; None when mounted, else why not."""
    if not shutil.which("mount"):
        return "mount is not installed"
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return f"this machine does not let the test mount a tmpfs ({done.stderr.strip() or done.returncode})"
    return None


def fill(folder: Path) -> Path:
    """Write a file into `folder` until the disk refuses more; returns it."""
    filler = folder / "filler.bin"
    chunk = b"\0" * (256 * 1024)
    with open(filler, "wb") as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(chunk)
                out.flush()
    with contextlib.suppress(OSError), open(folder / "filler-tail.bin", "wb") as out:
        while True:  # the last few kilobytes, too
            out.write(b"\0" * 4096)
            out.flush()
    return filler


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require(None if shutil.which("redis-server") else "redis-server is not installed")
    tmp = tmp_path_factory.mktemp("full_disk")
    var = tmp / "var"
    require(mount_tmpfs(var, "20m"))
    redis = worker = driver = None
    try:
        redis = e2e.RedisServer(REDIS_PORT, tmp / "redis.log")
        env = e2e.base_env(var, database_url=f"sqlite:///{var / 'embperf.sqlite3'}", broker_url=redis.url,
                           extra=FAST)
        with running_simulator() as sim:
            e2e.migrate(env)
            queue = e2e.unique_name("full")
            driver = e2e.Driver(env, tmp / "driver.log")
            ids = driver.call("setup", sim_url=sim.base_url, queue=queue)
            worker = e2e.Worker(env, queue, tmp / "worker.log")
            worker.wait_ready()
            yield {"driver": driver, "worker": worker, "ids": ids, "var": var}
    finally:
        for part in (driver, worker):
            if part is not None:
                part.stop()
        if redis is not None:
            redis.stop()
        subprocess.run(["umount", "-l", str(var)], capture_output=True)


def test_a_full_disk_mid_run_loses_nothing_and_says_so(stack):
    driver, worker, ids, var = stack["driver"], stack["worker"], stack["ids"], stack["var"]
    token = driver.call("token")["token"]
    run_id = driver.call("start", target=ids["target"], plan=ids["steps"], label="full disk")["run"]
    e2e.wait_for(driver, run_id, lambda s: s["status"] in ENDED or (s["phase"] == "measure" and s["level_index"] == 1),
                 timeout=60, worker=worker)
    driver.call("checkpoint")  # the write-ahead log emptied: every write from now on needs new space
    filler = fill(var)
    try:
        assert shutil.disk_usage(var).free < 64 * 1024
        # While the disk is full: a write is a JSON 503 that says why, and a read succeeds.
        refused = driver.call("api_token", method="POST", path="/api/v1/runs/", token=token,
                              body={"target": ids["target"], "plan": ids["short"]})
        assert refused["status"] == 503, refused
        assert refused["content_type"].startswith("application/json")
        assert "the portal's storage is full" in json.loads(refused["text"])["detail"].lower()
        read = driver.call("api_token", method="GET", path=f"/api/v1/runs/{run_id}/", token=token)
        assert read["status"] == 200, read
        # Level 1 finishes while the disk is full; the retry window passes; the file cannot be written either.
        time.sleep(DB_RETRY_S + 12)
        state = driver.call("run", run=run_id)
        assert state["status"] == "running", state  # not taken for dead, not ended with a false cause
        assert not list((var / "unsaved").glob("*.json"))
        assert "could not save its results" in worker.log(), worker.log()[-3000:]
    finally:
        filler.unlink()
        (var / "filler-tail.bin").unlink(missing_ok=True)
    # Stored straight from memory, or (had the file gone first) written back from unsaved/ by the worker's timer.
    state = e2e.wait_for(driver, run_id, lambda s: s["status"] in ENDED and "writes them here once" not in s["reason"],
                         timeout=60, worker=worker)
    assert state["status"] == "failed", state
    assert "The disk holding the database was full" in state["reason"], state["reason"]
    assert "kept in memory" in state["reason"] or "written back" in state["reason"]
    assert "probably died" not in state["reason"]
    loads = [(level["concurrency"], level["status"]) for level in state["levels"]]
    assert loads[:2] == [(1, "completed"), (2, "completed")], loads
    assert len({load for load, _ in loads}) == len(loads) <= 3
    assert state["phase"] == "done"
    # Stored once; the run is not measured again, and the worker keeps consuming.
    time.sleep(3)
    assert len(driver.call("run", run=run_id)["levels"]) == len(loads)
    assert worker.proc.poll() is None
    after = driver.call("start", target=ids["target"], plan=ids["short"], label="after the full disk")["run"]
    assert e2e.wait_for(driver, after, lambda s: s["status"] in ENDED, timeout=60, worker=worker)["status"] == \
        "succeeded"
