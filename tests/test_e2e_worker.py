"""End to end with real processes: a Celery worker consumes a real broker, runs a short sweep
against the simulator, and the levels land in the database and on the run page; a cancel takes
effect within 2 s.

Runs on two stacks: the embedded default (SQLite file + file-system broker) and PostgreSQL +
Redis on 127.0.0.1. The second skips with the reason when a service is absent, except on CI
(CI=true), where it fails.
"""
import re
from datetime import datetime

import pytest

from benchmarks.simulator import running_simulator
from portal.front.templatetags.embperf_format import ms, num
from tests import e2e_support as e2e
from tests.prerequisites import require

pytestmark = pytest.mark.e2e

STACKS = ["embedded", "postgres-redis"]


@pytest.fixture(scope="module")
def simulator():
    with running_simulator() as sim:
        yield sim


@pytest.fixture(scope="module", params=STACKS)
def stack(request, simulator, tmp_path_factory):
    """A migrated database, a broker, a worker on a unique queue and a driver; torn down after."""
    var_dir = tmp_path_factory.mktemp(f"e2e-{request.param}")
    queue = e2e.unique_name("e2e_sweeps")
    cleanups = []
    if request.param == "embedded":
        env = e2e.base_env(var_dir, database_url=f"sqlite:///{var_dir / 'e2e.sqlite3'}", broker_url="filesystem://")
    else:
        require(e2e.postgres_available())
        require(e2e.redis_available())
        db_name = e2e.unique_name("embperf_e2e")
        database_url = e2e.create_postgres_database(db_name)
        cleanups.append(lambda: e2e.drop_postgres_database(db_name))
        cleanups.append(lambda: e2e.drop_redis_queue(queue))
        env = e2e.base_env(var_dir, database_url=database_url, broker_url=e2e.REDIS_URL)
    try:
        with e2e.worker_stack(env, queue, var_dir, simulator.base_url) as parts:
            yield {**parts, "name": request.param}
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


def test_worker_runs_a_sweep_and_the_levels_show_on_the_run_page(stack):
    driver, worker, ids = stack["driver"], stack["worker"], stack["ids"]
    started = driver.call("start", target=ids["target"], plan=ids["short"], label=f"e2e {stack['name']}")
    assert started["status"] == "queued"
    run_id = started["run"]
    state = e2e.wait_for(driver, run_id, lambda s: s["status"] not in ("queued", "running"), timeout=90, worker=worker)
    assert state["status"] == "succeeded", (state["reason"], worker.log()[-3000:])
    assert state["worker_host"].startswith("e2e_")
    levels = state["levels"]
    assert [level["concurrency"] for level in levels] == [1, 2]
    for level in levels:
        assert level["status"] == "completed"
        assert level["requests_ok"] > 0 and level["qps"] > 0
        assert level["error_rate"] == 0
        assert 0 < level["p99"] < 5000
    # Two requests in flight move more requests per second than one against a batching server.
    assert levels[1]["qps"] > levels[0]["qps"]
    assert state["recent"] > 0
    assert state["summary"].get("peak_qps")

    page = driver.call("page", run=run_id)
    assert page["status"] == 200
    html = page["html"]
    assert "Succeeded" in html or "succeeded" in html
    for level in levels:
        # The results table's row of this level shows its QPS and p99 as the page formats them.
        match = re.search(rf'<tr data-level="{level["index"]}".*?</tr>', html, re.S)
        assert match, f"no results-table row for level {level['index']}"
        assert num(level["qps"]) in match.group(0)
        assert ms(level["p99"]) in match.group(0)


def test_two_runs_of_one_target_take_turns(stack):
    driver, worker, ids = stack["driver"], stack["worker"], stack["ids"]
    first = driver.call("start", target=ids["target"], plan=ids["short"], label="e2e turn 1")["run"]
    second = driver.call("start", target=ids["target"], plan=ids["short"], label="e2e turn 2")["run"]
    done = lambda s: s["status"] not in ("queued", "running")  # noqa: E731
    a = e2e.wait_for(driver, first, done, timeout=90, worker=worker)
    b = e2e.wait_for(driver, second, done, timeout=90, worker=worker)
    # The second waited (looking again many times: more than Celery's default of 3 retries) and then ran.
    assert a["status"] == b["status"] == "succeeded", (a["reason"], b["reason"], worker.log()[-3000:])
    assert worker.log().count("target busy with run") > 3
    one, two = sorted([a, b], key=lambda s: s["started"])
    assert datetime.fromisoformat(two["started"]) >= datetime.fromisoformat(one["finished"])


def test_cancel_takes_effect_within_two_seconds(stack):
    driver, worker, ids = stack["driver"], stack["worker"], stack["ids"]
    run_id = driver.call("start", target=ids["target"], plan=ids["long"], label="e2e cancel")["run"]
    e2e.wait_for(driver, run_id, lambda s: s["phase"] == "measure" or s["status"] not in ("queued", "running"),
             timeout=60, worker=worker)
    cancel = driver.call("cancel", run=run_id)
    assert cancel["status"] == "running"
    state = e2e.wait_for(driver, run_id, lambda s: s["status"] != "running", timeout=30, worker=worker)
    assert state["status"] == "cancelled", state
    # Both times come from the database host's clock in the driver and the worker: the same machine.
    took = datetime.fromisoformat(state["finished"]) - datetime.fromisoformat(cancel["at"])
    assert took.total_seconds() < 2.0, f"the cancel took {took.total_seconds():.2f} s"
    assert "Cancelled on request" in state["reason"]
