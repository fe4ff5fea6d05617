"""End to end with a real Celery worker and the simulator: every finished run gets a verdict, and a
sweep whose server is killed mid-sweep (5 s levels, the default 10 s abort window) fails it, naming the
unreachable time and the error-rate breach, with no SLO level taken from a level that errored."""
import pytest

from benchmarks.simulator import running_simulator
from tests import e2e_support as e2e

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def simulator():
    # This module's own simulator: the last test kills it. 50 ms per request keeps the successes of the
    # level it dies in few enough that its refused attempts are well above the 1 % error threshold.
    with running_simulator(batch_ms=1, token_us=0, delay_ms=50) as sim:
        yield sim


@pytest.fixture(scope="module")
def stack(simulator, tmp_path_factory):
    with e2e.embedded_stack("e2e_verdict", tmp_path_factory, simulator.base_url) as parts:
        yield parts


ended = e2e.ended


def test_a_clean_sweep_passes(stack):
    driver, worker, ids = stack["driver"], stack["worker"], stack["ids"]
    run_id = driver.call("start", target=ids["target"], plan=ids["short"], label="clean")["run"]
    state = e2e.wait_for(driver, run_id, ended, timeout=120, worker=worker)
    assert state["status"] == "succeeded", (state["reason"], worker.log()[-3000:])
    run = driver.call("api", method="GET", path=f"/api/v1/runs/{run_id}/")["json"]
    assert run["verdict"] == "passed" and run["verdict_reasons"] == [] and run["unreachable_s"] == 0


def test_a_sweep_whose_server_is_killed_fails_its_verdict(stack, simulator):
    driver, worker, ids = stack["driver"], stack["worker"], stack["ids"]
    # The finding's plan, shortened to four levels: 5 s levels and the model's default 10 s abort window.
    plan = driver.call("plan", name="killed", levels=[1, 2, 4, 8], warmup_s=0.5, duration_s=5, tokens=16,
                       dimensions=128, timeout_s=5, slo_p99_ms=500)["plan"]
    run_id = driver.call("start", target=ids["target"], plan=plan, label="killed")["run"]
    # Kill the server in the middle of the third level's measured window: once two of its seconds are
    # recorded, so that level has good seconds (the abort policy cannot fire in it) and errors after them.
    state = e2e.wait_for(driver, run_id, lambda s: (s["level_index"] == 2 and s["phase"] == "measure") or ended(s),
                         timeout=120, worker=worker)
    seconds_before = state["recent"]  # per-second points of the whole run so far
    e2e.wait_for(driver, run_id, lambda s: s["recent"] >= seconds_before + 2 or ended(s), timeout=30, worker=worker)
    simulator.stop()
    state = e2e.wait_for(driver, run_id, ended, timeout=120, worker=worker)
    assert state["status"] == "succeeded", (state["reason"], worker.log()[-3000:])

    run = driver.call("api", method="GET", path=f"/api/v1/runs/{run_id}/")["json"]
    levels = {level["concurrency"]: level for level in run["levels"]}
    # The window is cut to the level's 5 s, so the abort policy fires on the first level that is all refused.
    assert run["plan_config"]["abort_window_s"] == 5  # the plan says 10 s; a level could never fill it
    assert run["aborted_at_level"] == 8, run["status_reason"]
    assert levels[8]["error_rate"] == 1.0 and levels[4]["error_rate"] > 0.01
    assert run["verdict"] == "failed"
    reasons = run["verdict_reasons"]
    assert any(r.startswith("target unreachable for") for r in reasons), reasons
    assert any(r.startswith("error rate <= 1 % breached at level 4 (") and "8 (100 %)" in r for r in reasons), reasons
    assert run["unreachable_s"] > 5

    # No SLO level, peak or knee from a level above the error threshold.
    summary = run["summary"]
    errored = {load for load, level in levels.items() if level["error_rate"] > 0.01}
    assert errored >= {4, 8} and set(summary["errored_levels"]) == errored
    assert summary["slo_max_level"] == 2
    assert summary["peak_level"] not in errored and summary["knee_level"] not in errored

    doc = driver.call("api", method="GET", path=f"/api/v1/runs/{run_id}/export/")["json"]
    assert doc["plan"]["abort_window_s"] == 5
    assert doc["run"]["verdict"] == "failed" and doc["run"]["unreachable_s"] == run["unreachable_s"]
    page = driver.call("page", run=run_id)["html"]
    assert 'id="run-verdict"' in page and 'id="unreachable"' in page
    assert "The target refused connections for" in page
