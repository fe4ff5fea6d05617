"""Load processes (benchmarks/pool.py): P > 1 works also when the caller is itself a daemonic process,
as a Celery prefork pool child is, and a start failure names its real cause."""
import multiprocessing
import os
import signal
import time

import pytest

from benchmarks.errors import SweepError
from benchmarks.pool import LoadPool
from benchmarks.simulator import running_simulator
from benchmarks.sweep import run_sweep


def _sweep_in_child(base_url: str, out) -> None:
    try:
        doc = run_sweep({"flavor": "openai", "base_urls": [base_url], "model": "sim-embed"},
                        {"levels": [2], "warmup_s": 0, "duration_s": 1, "tokens": 16, "dimensions": 32,
                         "timeout_s": 5, "processes": 2})
        out.put(("ok", doc["levels"][0]["client"]["processes"], doc["levels"][0]["requests_ok"]))
    except BaseException as exc:  # handed to the test
        out.put(("error", f"{type(exc).__name__}: {exc}", 0))


@pytest.mark.parametrize("parent", ["multiprocessing", "billiard"])
def test_two_load_processes_start_inside_a_daemonic_process(parent):
    # A Celery prefork child is a daemonic billiard process; multiprocessing refuses children to daemonic
    # processes, and cannot pickle billiard's authentication key when it spawns one.
    if parent == "billiard":
        import billiard

        ctx = billiard.get_context("spawn")
    else:
        ctx = multiprocessing.get_context("spawn")
    with running_simulator(batch_ms=1, token_us=0, native_dimensions=32) as sim:
        out = ctx.Queue()
        child = ctx.Process(target=_sweep_in_child, args=(sim.base_url, out), daemon=True)
        child.start()
        try:
            kind, detail, ok = out.get(timeout=90)
        finally:
            child.join(10)
        texts = list(sim.texts_seen)
    assert kind == "ok", detail
    assert detail == 2 and ok > 0
    # Unique texts carry their load process's number after the 6-character run salt.
    streams = {text[6:8] for text in texts}
    assert {"00", "01"} <= streams


def test_a_process_that_cannot_start_names_the_cause_and_close_does_not_mask_it(monkeypatch):
    pool = LoadPool({"processes": 2}, 2)

    def refuse(self):
        raise OSError("Resource temporarily unavailable (simulated fork limit)")

    monkeypatch.setattr(type(pool._workers[0]), "start", refuse)
    with pytest.raises(SweepError, match="could not start load process 0: OSError: Resource temporarily"):
        pool.start()
    pool.close()  # must not raise "can only join a started process"


CONFIG = {"flavor": "openai", "model": "m", "dimensions": None, "encoding": "float",
          "base_urls": ["http://127.0.0.1:9/v1"], "api_key": None, "input": "unique", "batch": 1,
          "chars_per_text": 40, "corpus": None, "salt": "abcdef", "seed": None}


def _pool_in_child(out) -> None:
    pool = LoadPool(CONFIG, 2)
    pool.start()
    out.put([worker.pid for worker in pool._started])
    time.sleep(600)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return any(line.startswith("State:") and "Z" in line for line in fh)
    except FileNotFoundError:
        return True


def test_load_processes_leave_when_their_parent_is_killed():
    # They are started with the daemonic guard set aside, so they must see to it themselves.
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_pool_in_child, args=(out,), daemon=True)
    child.start()
    pids = out.get(timeout=60)
    assert len(pids) == 2 and not any(_gone(pid) for pid in pids)
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    deadline = time.monotonic() + 15
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in pids), "load processes outlived their parent"
