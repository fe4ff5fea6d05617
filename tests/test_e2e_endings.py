"""End to end with a real Celery worker (prefork pool, SQLite + file-system broker): a plan with two
load processes runs from the portal, a target outage mid-level ends the sweep as stopped by the abort
policy with a bounded error count, and a start the broker refuses answers 503 and can be queued again."""
import socket
import time

import pytest

from benchmarks.simulator import running_simulator
from tests import e2e_support as e2e

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def simulator():
    with running_simulator(batch_ms=1, token_us=0, delay_ms=5) as sim:
        yield sim


@pytest.fixture(scope="module")
def stack(simulator, tmp_path_factory):
    with e2e.embedded_stack("e2e_endings", tmp_path_factory, simulator.base_url) as parts:
        yield parts


ended = e2e.ended


def test_two_load_processes_run_under_the_worker(stack, simulator):
    driver, worker, ids = stack["driver"], stack["worker"], stack["ids"]
    plan = driver.call("plan", name="two processes", levels=[2], warmup_s=0.5, duration_s=2, tokens=16,
                       dimensions=128, timeout_s=5, processes=2)["plan"]
    run_id = driver.call("start", target=ids["target"], plan=plan, label="processes 2")["run"]
    state = e2e.wait_for(driver, run_id, ended, timeout=120, worker=worker)
    assert state["status"] == "succeeded", (state["reason"], worker.log()[-3000:])
    doc = driver.call("api", method="GET", path=f"/api/v1/runs/{run_id}/export/")["json"]
    level = doc["levels"][0]
    assert level["client"]["processes"] == 2 and doc["client"]["processes"] == 2
    assert level["requests_ok"] > 0 and level["requests_failed"] == 0
    # Unique texts carry their load process's number after the 6-character run salt: both processes sent.
    streams = {text[6:8] for text in list(simulator.texts_seen)}
    assert {"00", "01"} <= streams


def test_a_target_outage_mid_level_ends_as_stopped_by_the_abort_policy(stack, simulator):
    driver, worker, ids = stack["driver"], stack["worker"], stack["ids"]
    plan = driver.call("plan", name="outage", levels=[4, 8], warmup_s=0, duration_s=12, tokens=16, dimensions=128,
                       timeout_s=5, abort_error_rate=0.5, abort_window_s=2)["plan"]
    run_id = driver.call("start", target=ids["target"], plan=plan, label="outage")["run"]
    e2e.wait_for(driver, run_id, lambda s: s["phase"] == "measure" or ended(s), timeout=60, worker=worker)
    time.sleep(1.0)
    simulator.refuse_now(6.0)
    state = e2e.wait_for(driver, run_id, ended, timeout=60, worker=worker)
    assert state["status"] == "succeeded", (state["reason"], worker.log()[-3000:])
    assert "refused connections" in state["reason"]
    run = driver.call("api", method="GET", path=f"/api/v1/runs/{run_id}/")["json"]
    assert run["aborted_at_level"] == 4
    assert [level["concurrency"] for level in run["levels"]] == [4]
    doc = driver.call("api", method="GET", path=f"/api/v1/runs/{run_id}/export/")["json"]
    level = doc["levels"][0]
    assert level["status"] == "aborted" and level["unreachable_s"] >= 1.0
    # Backoff: a few attempts per slot during the outage, not thousands.
    assert 0 < level["errors"]["connect_error"] <= 150, level["errors"]
    page = driver.call("page", run=run_id)["html"]
    assert 'id="aborted-at-level"' in page


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_start_the_broker_refuses_is_503_and_the_run_can_be_queued_again(simulator, tmp_path):
    env = e2e.base_env(tmp_path, database_url=f"sqlite:///{tmp_path / 'e2e.sqlite3'}",
                       broker_url=f"redis://127.0.0.1:{dead_port()}/0")
    e2e.migrate(env)
    driver = e2e.Driver(env, tmp_path / "driver.log")
    try:
        ids = driver.call("setup", sim_url=simulator.base_url, queue="nobody")
        started = time.monotonic()
        answer = driver.call("api", method="POST", path="/api/v1/runs/",
                             body={"target": ids["target"], "plan": ids["short"]})
        took = time.monotonic() - started
        assert answer["status"] == 503, answer
        body = answer["json"]
        assert "Could not hand the job to a worker" in body["detail"] and "CELERY_BROKER_URL" in body["detail"]
        assert took < 60, f"the refusal took {took:.0f} s"
        state = driver.call("run", run=body["id"])
        assert state["status"] == "failed" and state["started"] is None
        again = driver.call("api", method="POST", path=body["links"]["enqueue"])
        assert again["status"] == 503 and again["json"]["id"] == body["id"]
    finally:
        driver.stop()
