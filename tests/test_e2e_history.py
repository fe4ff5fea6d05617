"""End to end with a real Celery worker and the simulator: the sequence a new user meets. A baseline,
two tuned runs with a changed server config (the simulator made faster), a run 20 % slower with the
tuned config, and one whose simulator is killed mid-sweep, all of one plan with 5 s levels. The
history page and the dashboard flag the slower and the killed run and not the tuned ones; the tuned
runs start a new segment; the killed run fails its verdict naming the outage, and its SLO level is
never one that errored.

Deterministic on a loaded host: the simulator's per-request delay sets the latency (40 ms baseline,
32 ms tuned, 50 ms slower), so the changes that must be flagged are 20-25 %, and the tuned runs'
changes are improvements; nothing here has repeats, so the wide floor (10 % on p99) covers a busy
client host's scheduling delay. The kill happens once the level has recorded two measured seconds."""
import pytest

from benchmarks.simulator import running_simulator
from tests import e2e_support as e2e

pytestmark = pytest.mark.e2e

DEFAULT = {"--max-running-requests": "64"}
TUNED = {"--max-running-requests": "128", "--chunked-prefill-size": "4096"}


@pytest.fixture(scope="module")
def simulator():
    with running_simulator(batch_ms=0, token_us=0, batch_wait_ms=0, delay_ms=40) as sim:
        yield sim


@pytest.fixture(scope="module")
def stack(simulator, tmp_path_factory):
    with e2e.embedded_stack("e2e_history", tmp_path_factory, simulator.base_url) as parts:
        yield parts


ended = e2e.ended


def test_a_tuning_history_flags_the_slower_and_the_killed_run(stack, simulator):
    driver, worker, ids = stack["driver"], stack["worker"], stack["ids"]
    # The finding's plan, three levels of 5 s with the default 10 s abort window and a latency SLO.
    plan = driver.call("plan", name="1-8", levels=[1, 4, 8], warmup_s=0.5, duration_s=5, tokens=16,
                       dimensions=128, timeout_s=5, slo_p99_ms=500)["plan"]

    def sweep(label: str, delay_ms: float, config: dict) -> int:
        simulator.config.delay_ms = delay_ms
        run_id = driver.call("start", target=ids["target"], plan=plan, label=label, server_config=config)["run"]
        state = e2e.wait_for(driver, run_id, ended, timeout=150, worker=worker)
        assert state["status"] == "succeeded", (label, state["reason"], worker.log()[-3000:])
        return run_id

    baseline = sweep("baseline", 40, DEFAULT)
    marked = driver.call("api", method="POST", path=f"/api/v1/runs/{baseline}/baseline/")
    assert marked["status"] == 200, marked
    tuned_a = sweep("tuned", 32, TUNED)
    tuned_b = sweep("tuned again", 32, TUNED)
    slower = sweep("slower", 50, TUNED)

    # The killed run: the server dies in the middle of the last level's measured window.
    simulator.config.delay_ms = 32
    killed = driver.call("start", target=ids["target"], plan=plan, label="server died", server_config=TUNED)["run"]
    state = e2e.wait_for(driver, killed, lambda s: (s["level_index"] == 2 and s["phase"] == "measure") or ended(s),
                         timeout=150, worker=worker)
    seconds_before = state["recent"]
    e2e.wait_for(driver, killed, lambda s: s["recent"] >= seconds_before + 2 or ended(s), timeout=30, worker=worker)
    simulator.stop()
    state = e2e.wait_for(driver, killed, ended, timeout=150, worker=worker)
    assert state["status"] == "succeeded", (state["reason"], worker.log()[-3000:])

    run = driver.call("api", method="GET", path=f"/api/v1/runs/{killed}/")["json"]
    levels = {level["concurrency"]: level for level in run["levels"]}
    assert run["verdict"] == "failed"
    assert any(r.startswith("target unreachable for") for r in run["verdict_reasons"]), run["verdict_reasons"]
    assert levels[8]["error_rate"] > 0.01
    errored = {load for load, level in levels.items() if level["error_rate"] > 0.01}
    assert run["summary"]["slo_max_level"] not in errored and run["summary"]["slo_max_level"] == 4

    seen = driver.call("history", target=ids["target"], plan=plan)
    flagged = {int(k): v for k, v in seen["flagged"].items()}
    assert set(flagged) == {slower, killed}, flagged
    assert any(r.startswith("Requests/s -") for r in flagged[slower]), flagged[slower]
    assert flagged[killed][0].startswith("Verdict failed: "), flagged[killed]
    # The dashboard lists the same runs, by the same rule.
    assert set(seen["dashboard"]) == {slower, killed}
    for run_id in (slower, killed):
        assert f"/runs/{run_id}/" in seen["dashboard_html"]
    # The tuned runs start a new segment, with the config step that made it.
    segments = seen["segments"]
    assert [seg["runs"] for seg in segments] == [[baseline], [tuned_a, tuned_b, slower, killed]]
    assert any("--max-running-requests: 64 → 128" in change for change in segments[1]["changes"]), segments
    assert "config" in seen["history_html"]
