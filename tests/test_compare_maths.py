"""The comparison maths on fixed inputs with answers worked out by hand."""
import math

import pytest

from benchmarks.compare import (
    K_SIGMA,
    METRICS,
    between_run_noise,
    binomial_standard_error,
    combine_noise,
    compare_values,
    level_noise,
    quantile_standard_error,
    significance_threshold,
    standard_error_of_mean,
)


def test_k_is_three_sigma():
    assert K_SIGMA == 3.0


def test_seed_tuning_table_is_better_and_significant():
    # The seed's "before / after tuning" figures: +27.8 % QPS at 16 in flight, p99 380 -> 260 ms.
    qps = compare_values(METRICS["qps"], 100.0, 2.0, 127.8, 2.0)
    assert qps.diff == pytest.approx(27.8)
    assert qps.pct == pytest.approx(27.8)
    assert qps.threshold == pytest.approx(3 * math.sqrt(8))
    assert qps.better is True and qps.significant is True and qps.verdict == "better"

    p99 = compare_values(METRICS["p99_ms"], 380.0, 10.0, 260.0, 10.0)
    assert p99.diff == pytest.approx(-120.0)
    assert p99.pct == pytest.approx(-31.578947, rel=1e-6)
    assert p99.better is True and p99.verdict == "better"


def test_latency_increase_is_worse():
    d = compare_values(METRICS["p99_ms"], 200.0, 5.0, 260.0, 5.0)
    assert d.better is False and d.verdict == "worse" and d.pct == pytest.approx(30.0)


def test_change_within_noise_is_not_significant():
    d = compare_values(METRICS["qps"], 100.0, 1.0, 104.0, 1.0)
    assert d.threshold == pytest.approx(4.242640687)
    assert d.significant is False and d.verdict == "same"
    # Just past the threshold it is.
    assert compare_values(METRICS["qps"], 100.0, 1.0, 104.25, 1.0).verdict == "better"


def test_changes_below_two_percent_are_never_significant():
    # In-level noise of 0.1 ms on a 50 ms p50 would flag +0.6 ms; the 2 % floor (1 ms) does not.
    d = compare_values(METRICS["p50_ms"], 50.0, 0.1, 50.6, 0.1)
    assert d.threshold == pytest.approx(1.0)
    assert d.verdict == "same"
    assert compare_values(METRICS["p50_ms"], 50.0, 0.1, 51.2, 0.1).verdict == "worse"
    # A zero baseline (no errors) has no floor: any error rate beyond its noise is a change.
    assert compare_values(METRICS["error_rate"], 0.0, 0.0001, 0.01, 0.001).verdict == "worse"


def test_unknown_noise_gives_unknown_verdict_and_zero_base_no_percent():
    d = compare_values(METRICS["error_rate"], 0.0, None, 0.02, 0.001)
    assert d.significant is None and d.verdict == "unknown"
    assert d.pct is None and d.better is False
    assert compare_values(METRICS["qps"], 5.0, 1.0, 5.0, 1.0).better is None


def test_significance_threshold_uses_k():
    assert significance_threshold(3.0, 4.0, k=2.0) == pytest.approx(10.0)
    assert significance_threshold(3.0, None) is None


def test_standard_error_without_autocorrelation():
    # Alternating series: lag-1 autocorrelation is negative, clamped to 0; sd = sqrt(4/3), n = 4.
    assert standard_error_of_mean([10, 12, 10, 12]) == pytest.approx(math.sqrt(4 / 3) / 2)


def test_standard_error_corrects_for_autocorrelation():
    # 1..5: r1 = 4/10 = 0.4, n_eff = 5 * 0.6 / 1.4, sd = sqrt(10/4).
    expected = math.sqrt(2.5) / math.sqrt(5 * 0.6 / 1.4)
    assert standard_error_of_mean([1, 2, 3, 4, 5]) == pytest.approx(expected)
    assert standard_error_of_mean([7]) is None


def test_quantile_standard_error():
    # p99 of 10,000 samples, q(98.5) = 90 ms and q(99.5) = 110 ms: 1/f = 20 ms / 0.01.
    se = quantile_standard_error(99.0, 10_000, 90.0, 110.0, 0.5)
    assert se == pytest.approx(math.sqrt(0.99 * 0.01 / 10_000) * 2000)
    assert quantile_standard_error(99.0, 1, 90.0, 110.0, 0.5) is None


def test_binomial_standard_error_floors_zero_rate():
    assert binomial_standard_error(0.01, 10_000) == pytest.approx(math.sqrt(0.01 * 0.99 / 10_000))
    assert binomial_standard_error(0.0, 100) == pytest.approx(math.sqrt(0.01 * 0.99 / 100))
    assert binomial_standard_error(0.0, 0) is None


def test_between_run_noise_needs_three_runs():
    assert between_run_noise([10, 12, 14]) == pytest.approx(1.4826 * 2 / math.sqrt(2))
    # A step from 10 to 20 among small wiggles: the median step is 0.5, not the jump.
    assert between_run_noise([10, 10.5, 10, 20, 20.5, 20]) == pytest.approx(1.4826 * 0.5 / math.sqrt(2))
    assert between_run_noise([10, 12, None]) is None
    assert combine_noise(0.5, 2.0) == 2.0
    assert combine_noise(None, None) is None
    assert combine_noise(0.5, None) == 0.5


def test_level_noise_from_timeseries_and_histogram():
    doc = {
        "qps": 11.0,
        "tokens_per_s": 11.0 * 512,
        "requests_ok": 10_000,
        "requests_failed": 0,
        "error_rate": 0.0,
        "duration_s": 4,
        "latency_ms": {"p50": 50.0, "p90": 90.0, "p99": 99.0},
        "timeseries": [{"t": t, "completed": c, "p50_ms": 50.0, "p99_ms": 99.0}
                       for t, c in enumerate([10, 12, 10, 12])],
    }
    noise = level_noise(doc, quantile=lambda p: p)  # a latency of p ms at percentile p: 1/f = 100 ms
    assert noise["qps"] == pytest.approx(math.sqrt(4 / 3) / 2)
    assert noise["tokens_per_s"] == pytest.approx(noise["qps"] * 512)
    assert noise["p99_ms"] == pytest.approx(math.sqrt(0.99 * 0.01 / 10_000) * 100)
    assert noise["p90_ms"] == pytest.approx(math.sqrt(0.9 * 0.1 / 10_000) * 100)
    assert noise["p50_ms"] == pytest.approx(math.sqrt(0.25 / 10_000) * 100)
    assert noise["error_rate"] == pytest.approx(binomial_standard_error(0.0, 10_000))
    # Without a histogram, p90 has no estimate and p99 falls back to the per-second spread (0 here).
    bare = level_noise(doc)
    assert bare["p90_ms"] is None and bare["p99_ms"] == 0.0
