"""A history without repeats: the noise inside one level cannot see what varies between runs, and on a
fixed-cost server it is near zero. A tuned run whose p99 at 8 read 5 % above the baseline's (a few ms of
scheduling delay on a busy client host) was flagged "p99 +5.0 % at 8"; until repeats measure the
between-run spread, the floor is benchmarks.compare.UNREPEATED_RELATIVE_CHANGE."""
import datetime as dt

from benchmarks.compare import METRICS, MIN_RELATIVE_CHANGE, UNREPEATED_RELATIVE_CHANGE, change_floor, compare_values
from portal.history.timeline import RunPoint, flag_regressions

WHEN = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)


def point(n: int, qps: float, p99: float, fingerprint: str = "tuned") -> RunPoint:
    levels = {("", 8.0): {"id": n * 10, "qps": qps, "p99_ms": p99, "error_rate": 0.0}}
    return RunPoint(id=n, created=WHEN + dt.timedelta(hours=n), label="", notes="", status="succeeded",
                    is_baseline=n == 1, fingerprint=fingerprint, levels=levels, verdict="passed")


# In-level noise of a fixed-cost server: a hundredth of a millisecond, a tenth of a request/s.
WITHIN = {10 * n: {"qps": 0.1, "p99_ms": 0.01, "error_rate": 0.0} for n in range(1, 6)}


def test_a_five_percent_p99_change_without_repeats_is_not_a_regression():
    baseline, tuned = point(1, 400, 100, "default"), point(2, 410, 105)
    flag_regressions(baseline, [tuned], WITHIN, between={})
    assert tuned.regressions == []


def test_a_twenty_percent_slower_run_without_repeats_is_one():
    baseline, slower = point(1, 400, 100, "default"), point(4, 320, 125)
    flag_regressions(baseline, [slower], WITHIN, between={})
    assert [r.split(" at ")[0] for r in slower.regressions] == ["Requests/s -20.0 %", "p99 latency +25.0 %"]


def test_with_repeats_on_both_sides_the_measured_spread_decides():
    baseline, tuned = point(1, 400, 100, "default"), point(2, 410, 105)
    # Repeats measured a 0.5 ms spread of p99 on each side: +5 ms is beyond 3 sigma and above 2 %.
    between = {p.id: {("", 8.0): {"qps": 2.0, "p99_ms": 0.5, "error_rate": None}} for p in (baseline, tuned)}
    flag_regressions(baseline, [tuned], WITHIN, between)
    assert [r.split(" at ")[0] for r in tuned.regressions] == ["p99 latency +5.0 %"]


def test_repeats_on_one_side_only_keep_the_wide_floor():
    baseline, tuned = point(1, 400, 100, "default"), point(2, 410, 105)
    between = {baseline.id: {("", 8.0): {"qps": 2.0, "p99_ms": 0.5, "error_rate": None}}}
    flag_regressions(baseline, [tuned], WITHIN, between)
    assert tuned.regressions == []


def test_the_floor_per_figure():
    assert change_floor("p99_ms", repeated=True) == MIN_RELATIVE_CHANGE
    assert change_floor("p99_ms", repeated=False) == UNREPEATED_RELATIVE_CHANGE["p99_ms"] == 0.10
    assert change_floor("qps", repeated=False) == 0.05
    assert change_floor("error_rate", repeated=False) == MIN_RELATIVE_CHANGE
    delta = compare_values(METRICS["p99_ms"], 100, 0.01, 109, 0.01, floor=change_floor("p99_ms", False))
    assert delta.verdict == "same" and delta.threshold == 10 and delta.to_dict()["floor"] == 0.10
