"""Stalls in closed loop: the per-level note that closed-loop percentiles cannot give."""
import time
from datetime import datetime

import pytest

from benchmarks.cli import results_table, summary_lines
from benchmarks.document import stall_note
from benchmarks.simulator import running_simulator
from benchmarks.sweep import run_sweep

FIXED = {"batch_ms": 0, "token_us": 0, "batch_wait_ms": 0, "delay_ms": 20}


def _wall(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_periodic_stall_is_noted_at_the_right_second():
    every, length = 6.0, 2.0
    with running_simulator(stall_s=length, stall_every_s=every, **FIXED) as sim:
        sim_started = time.time()
        doc = run_sweep({"name": "sim", "flavor": "openai", "base_urls": [sim.base_url], "model": "sim-embed"},
                        {"levels": [8], "warmup_s": 0.5, "duration_s": 8, "tokens": 32, "dimensions": 32,
                         "timeout_s": 5, "abort_error_rate": 1.0, "seed": 1})
    level = doc["levels"][0]
    window_start = _wall(level["started_at"])
    window_end = window_start + level["duration_s"]
    expected = [k * every for k in range(1, 5)
                if window_start < sim_started + k * every < window_end - length]
    assert expected, "the window should hold one whole stall"
    expected_t = sim_started + expected[0] - window_start
    stalls = level["stalls"]
    assert len(stalls) == 1, stalls
    assert stalls[0]["t"] == pytest.approx(expected_t, abs=0.5)
    assert stalls[0]["duration_s"] == pytest.approx(length, abs=0.3)
    note = stall_note(level)
    assert note == level["notes"][0]
    assert note.startswith(f"the server stopped answering for {stalls[0]['duration_s']:g} s at t = "
                           f"{stalls[0]['t']:g} s")
    assert "closed-loop percentiles do not show this; an open-loop plan at a fixed rate does" in note
    assert any(line == f"level 0: {note}" for line in summary_lines(doc))
    assert f"stalled {stalls[0]['duration_s']:g} s" in str(results_table(doc).columns[-1]._cells)


def test_no_stall_no_note():
    with running_simulator(**FIXED) as sim:
        doc = run_sweep({"name": "sim", "flavor": "openai", "base_urls": [sim.base_url], "model": "sim-embed"},
                        {"levels": [4], "warmup_s": 0.3, "duration_s": 2, "tokens": 32, "dimensions": 32,
                         "timeout_s": 5, "abort_error_rate": 1.0, "seed": 1})
    assert doc["levels"][0]["stalls"] == [] and doc["levels"][0]["notes"] == []


def test_a_stall_that_reached_p99_is_not_said_to_be_hidden():
    level = {"concurrency": 4, "rate": None, "stalls": [{"t": 9.7, "duration_s": 2.0}],
             "latency_ms": {"p99": 2127.9}}
    assert stall_note(level) == ("the server stopped answering for 2 s at t = 9.7 s; in closed loop only the "
                                 "requests in flight waited through it; an open-loop plan at a fixed rate shows "
                                 "its full effect")


def test_open_loop_stall_note_has_no_closed_loop_caveat():
    level = {"concurrency": None, "rate": 100, "stalls": [{"t": 3.2, "duration_s": 2.0}]}
    assert stall_note(level) == "the server stopped answering for 2 s at t = 3.2 s"


def test_a_stall_running_past_the_window_end_is_noted_once():
    from benchmarks.errors import OK
    from benchmarks.loadgen import LevelRunner

    work = {"index": 0, "mode": "closed", "concurrency": 1, "t0": 100.0, "warmup_s": 0.0, "duration_s": 8.0,
            "timeout_s": 5.0, "dims": 4}
    runner = LevelRunner(work, proc=0, flavor=None, urls=[], headers={}, inputs=None, out=None, stop_event=None)
    runner._record(100.0, 100.0, 100.5, OK, 200, 10, 1, 100)  # answers until t = 7
    runner._record(106.5, 106.5, 107.0, OK, 200, 10, 1, 100)
    runner.in_flight = 1
    runner._close_window(108.0)  # silent since t = 7 when the window closes at 8
    runner.in_flight = 0
    runner._record(107.0, 107.0, 109.5, OK, 200, 10, 1, 100)  # the answer that ends it, in the drain
    assert runner.stalls == [(7.0, 1.0)]
