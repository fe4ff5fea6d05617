"""Honest endings: a sweep the abort policy stopped says so (run.aborted_at_level), refused
connections back off instead of being retried as fast as the client can, and the level names how
long the target refused connections."""

from benchmarks.simulator import running_simulator
from benchmarks.sweep import run_sweep

FAST = {"batch_ms": 0, "token_us": 0, "batch_wait_ms": 0, "delay_ms": 5, "native_dimensions": 32}


def target(url: str) -> dict:
    return {"flavor": "openai", "base_urls": [url], "model": "sim-embed"}


def test_an_outage_mid_level_aborts_the_sweep_names_the_outage_and_backoff_bounds_the_errors():
    with running_simulator(**FAST) as sim:
        fired = []

        def on_progress(p):
            # A 6 s outage 1 s into the first level's window.
            if not fired and p["level_index"] == 0 and p["phase"] == "measure" and p["level_elapsed_s"] >= 1:
                fired.append(True)
                sim.refuse_now(6.0)

        doc = run_sweep(target(sim.base_url),
                        {"levels": [4, 8], "warmup_s": 0, "duration_s": 10, "tokens": 16, "dimensions": 32,
                         "timeout_s": 5, "abort_error_rate": 0.5, "abort_window_s": 2},
                        on_progress=on_progress)
    assert fired
    run = doc["run"]
    assert run["status"] == "succeeded"
    assert run["aborted_at_level"] == 4
    assert [lv["concurrency"] for lv in doc["levels"]] == [4], "the sweep stops after the aborted level"
    level = doc["levels"][0]
    assert level["status"] == "aborted"
    # The outage began about 1 s into the window and lasted until the level stopped (2-3 bad seconds later).
    assert 1.0 <= level["unreachable_s"] <= 6.5, level["unreachable_s"]
    assert "refused connections" in level["abort_reason"]
    assert "refused connections" in run["status_reason"]
    # Four slots retrying a refused port with no pause make thousands of attempts in a few seconds;
    # with a growing pause each slot tries about a dozen times.
    assert 0 < level["errors"]["connect_error"] <= 150, level["errors"]
    assert level["error_rate"] == round(level["requests_failed"] / (level["requests_ok"] + level["requests_failed"]), 6)


def test_a_completed_sweep_has_no_aborted_level():
    with running_simulator(**FAST) as sim:
        doc = run_sweep(target(sim.base_url), {"levels": [1], "warmup_s": 0, "duration_s": 0.5, "tokens": 16,
                                               "dimensions": 32, "timeout_s": 5})
    assert doc["run"]["aborted_at_level"] is None
    assert doc["levels"][0]["unreachable_s"] == 0
