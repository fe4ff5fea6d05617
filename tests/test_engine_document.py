"""Sweep summary: peak, knee and SLO level from the levels' figures."""
from benchmarks.document import summarize


def level(load, qps, p99, status="completed", ok=100, bound=False):
    return {"concurrency": load, "rate": None, "qps": qps, "latency_ms": {"p99": p99}, "status": status,
            "requests_ok": ok, "client": {"client_bound": bound}}


def test_peak_knee_and_slo():
    levels = [level(1, 100, 10), level(4, 380, 12), level(16, 900, 30), level(64, 950, 120),
              level(128, 940, 300)]
    summary = summarize(levels, slo_p99_ms=50)
    assert summary["peak_qps"] == 950 and summary["peak_level"] == 64
    # 16 -> 64: +5.6 % requests/s while p99 quadruples: the knee is at 16.
    assert summary["knee_level"] == 16
    assert summary["slo_max_level"] == 16
    assert summary["client_bound_levels"] == []


def test_slo_level_is_the_highest_level_whose_p99_meets_it():
    levels = [level(1, 50, 40.0), level(4, 190, 60.0), level(8, 360, 120.0), level(16, 400, 300.0)]
    assert summarize(levels, slo_p99_ms=150)["slo_max_level"] == 8
    assert summarize(levels, slo_p99_ms=120)["slo_max_level"] == 8  # met means p99 <= SLO
    assert summarize(levels, slo_p99_ms=10)["slo_max_level"] is None
    assert summarize(levels, slo_p99_ms=None)["slo_max_level"] is None


def test_no_knee_while_throughput_keeps_growing():
    summary = summarize([level(1, 100, 10), level(2, 200, 11), level(4, 400, 12)], slo_p99_ms=None)
    assert summary["knee_level"] is None and summary["slo_max_level"] is None


def test_cancelled_and_empty_levels_are_left_out():
    levels = [level(1, 100, 10), level(2, 500, 5, status="cancelled"), level(4, 0, None, ok=0, bound=True)]
    summary = summarize(levels, slo_p99_ms=20)
    assert summary["peak_level"] == 1 and summary["slo_max_level"] == 1
    assert summary["client_bound_levels"] == [4]


def test_aborted_level_counts_for_peak_but_not_for_the_slo():
    levels = [level(1, 100, 10), level(8, 300, 15, status="aborted")]
    summary = summarize(levels, slo_p99_ms=20)
    assert summary["peak_level"] == 8 and summary["slo_max_level"] == 1
