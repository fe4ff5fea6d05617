"""Comparison maths: differences between runs, their direction, and whether they exceed the noise.

Framework-free so the portal, the API and the CLI share one definition. Inputs are plain numbers
and level documents (embperf.run/1, see docs/result-schema.md); nothing here decodes histograms:
callers pass a `quantile` function (percentile -> milliseconds) when they have one.

The noise method is documented in docs/comparison.md. In short: every figure of a level gets a
standard error from the variation inside the level (per-second throughput, per-second
percentiles, the order-statistic error of a percentile from the latency histogram, the binomial
error of the error rate); when three or more runs of the same target and plan exist, the spread
of the figure across them is used instead whenever it is larger. A difference is significant
when it exceeds K times the combined noise of the two values, and at least 2 % of the baseline.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

# Three standard errors: with ~6 levels x 6 metrics compared at once, k=2 would flag about one
# change in every comparison of identical set-ups by chance alone (5 % per figure); k=3 keeps
# that near 0.3 % per figure and leaves margin for the error of the noise estimate itself.
K_SIGMA = 3.0

# A floor under the threshold, as a share of the baseline value. Noise measured inside one level
# misses what varies from run to run (server warm state, clocks, co-tenants, the client host), and
# two sweeps of an unchanged set-up routinely differ by a percent or so in p50. Below 2 % a change
# is never marked, however small the in-level noise, so identical set-ups do not raise alarms.
MIN_RELATIVE_CHANGE = 0.02

# The floor while a side's between-run spread is unknown (fewer than three repeats of its set-up).
# In-level noise cannot see what varies from one run to the next, and on a fixed-cost server it is
# near zero: a few milliseconds of scheduling delay on the client host would then read as a p99
# regression. Until repeats measure the spread, a change must exceed what unchanged set-ups commonly
# differ by: 5 % for throughput, the median and the mean, 10 % for the tails.
UNREPEATED_RELATIVE_CHANGE = {"qps": 0.05, "tokens_per_s": 0.05, "p50_ms": 0.05, "mean_ms": 0.05,
                              "p90_ms": 0.10, "p99_ms": 0.10, "goodput": 0.10}


def change_floor(metric_key: str, repeated: bool) -> float:
    """The least relative change that can be significant: MIN_RELATIVE_CHANGE once both sides'
    between-run noise is measured, the wider UNREPEATED_RELATIVE_CHANGE until then."""
    if repeated:
        return MIN_RELATIVE_CHANGE
    return UNREPEATED_RELATIVE_CHANGE.get(metric_key, MIN_RELATIVE_CHANGE)

# Lag-1 autocorrelation is clamped: per-second figures of a busy server are positively
# correlated, and an estimate near 1 from a short window would blow the error up to infinity.
MAX_AUTOCORRELATION = 0.9

# The percentile band used to estimate the density of latencies around a percentile.
QUANTILE_BAND = {50.0: 2.5, 90.0: 1.0, 95.0: 1.0, 99.0: 0.5, 99.9: 0.05}


@dataclass(frozen=True)
class Metric:
    """One figure that can be compared across runs."""

    key: str
    label: str
    unit: str
    higher_is_better: bool
    percentile: float | None = None  # for latency metrics: which percentile

    def better(self, diff: float) -> bool | None:
        """True when a change of `diff` (candidate - baseline) is an improvement; None for no change."""
        if diff == 0:
            return None
        return diff > 0 if self.higher_is_better else diff < 0


METRICS: dict[str, Metric] = {
    m.key: m
    for m in (
        Metric("qps", "Requests/s", "req/s", True),
        Metric("tokens_per_s", "Tokens/s", "tokens/s", True),
        Metric("mean_ms", "Mean latency", "ms", False),
        Metric("p50_ms", "p50 latency", "ms", False, 50.0),
        Metric("p90_ms", "p90 latency", "ms", False, 90.0),
        Metric("p99_ms", "p99 latency", "ms", False, 99.0),
        Metric("error_rate", "Error rate", "%", False),
        # Requests/s whose latency met the plan's SLO (docs/capacity.md); levels of plans without one have none.
        Metric("goodput", "Goodput", "req/s", True),
    )
}


# ---------------------------------------------------------------------------------------------
# Noise of one level


def autocorrelation_lag1(values: Sequence[float]) -> float:
    """Lag-1 autocorrelation of a series (0 when undefined: fewer than 3 points or no variance)."""
    n = len(values)
    if n < 3:
        return 0.0
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values)
    if var == 0:
        return 0.0
    cov = sum((values[i] - mean) * (values[i + 1] - mean) for i in range(n - 1))
    return cov / var


def standard_error_of_mean(values: Sequence[float]) -> float | None:
    """Standard error of the mean of a per-second series, corrected for lag-1 autocorrelation.

    Uses the AR(1) effective sample size n_eff = n (1 - r) / (1 + r) with r clamped to
    [0, MAX_AUTOCORRELATION]; None with fewer than 2 values.
    """
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    r = min(max(autocorrelation_lag1(values), 0.0), MAX_AUTOCORRELATION)
    n_eff = n * (1 - r) / (1 + r)
    return sd / math.sqrt(n_eff)


def quantile_standard_error(p: float, count: int, q_low: float, q_high: float, band: float) -> float | None:
    """Order-statistic standard error of the p-th percentile of `count` samples.

    Var(q_p) ~ p(1-p) / (n f(q_p)^2); the density f is read from the histogram as
    2*band / (q(p+band) - q(p-band)) with percentiles in % (so p and band in %).
    """
    if count < 2 or q_high < q_low:
        return None
    frac = p / 100.0
    width = (q_high - q_low) / (2 * band / 100.0)  # 1 / density, in ms per unit probability
    return math.sqrt(frac * (1 - frac) / count) * width


def binomial_standard_error(rate: float, attempts: int) -> float | None:
    """Standard error of an error rate; a rate of 0 is treated as 1/attempts so zero is not 'exact'."""
    if attempts <= 0:
        return None
    p = min(max(rate, 1.0 / attempts), 1.0)
    return math.sqrt(p * (1 - p) / attempts) if p < 1 else 1.0 / attempts


def _series(timeseries: Iterable[dict], key: str) -> list[float]:
    return [float(s[key]) for s in timeseries if s.get(key) is not None]


def level_noise(doc: dict, quantile: Callable[[float], float] | None = None,
                stddev_ms: float | None = None) -> dict[str, float | None]:
    """Standard error of each compared figure of one level, from the variation inside the level.

    `quantile(percentile) -> ms` reads the level's latency histogram; without it latency noise
    comes from the per-second percentiles alone (and p90 has none). `stddev_ms`, the histogram's
    standard deviation, gives the mean latency's error (sd / sqrt(n), or the per-second p50's drift
    when larger). None means unknown.
    """
    timeseries = doc.get("timeseries") or []
    noise: dict[str, float | None] = dict.fromkeys(METRICS)

    # Per-second completions are requests/s samples; their mean is the level's qps.
    noise["qps"] = standard_error_of_mean(_series(timeseries, "completed"))
    qps, tps = doc.get("qps"), doc.get("tokens_per_s")
    if noise["qps"] is not None and qps and tps is not None:
        noise["tokens_per_s"] = noise["qps"] * tps / qps

    count = int(doc.get("requests_ok") or 0) + int(doc.get("requests_failed") or 0)
    for key, series_key in (("p50_ms", "p50_ms"), ("p90_ms", None), ("p99_ms", "p99_ms")):
        p = METRICS[key].percentile
        candidates = []
        if series_key is not None:
            spread = standard_error_of_mean(_series(timeseries, series_key))
            if spread is not None:
                candidates.append(spread)
        if quantile is not None and count >= 2:
            band = QUANTILE_BAND[p]
            se = quantile_standard_error(p, count, quantile(p - band), quantile(min(p + band, 100.0)), band)
            if se is not None:
                candidates.append(se)
        noise[key] = max(candidates) if candidates else None

    mean_candidates = []
    if stddev_ms is not None and count >= 2:
        mean_candidates.append(stddev_ms / math.sqrt(count))
    drift = standard_error_of_mean(_series(timeseries, "p50_ms"))
    if drift is not None and mean_candidates:
        mean_candidates.append(drift)
    noise["mean_ms"] = max(mean_candidates) if mean_candidates else None

    noise["error_rate"] = binomial_standard_error(float(doc.get("error_rate") or 0), count)
    noise["goodput"] = _goodput_noise(doc, noise["qps"])
    return noise


def _goodput_noise(doc: dict, qps_noise: float | None) -> float | None:
    """Goodput is qps × r, r the share of successes that met the SLO's latency limit: its error combines
    the throughput's with the binomial error of r over the level's successes."""
    goodput, qps, ok = (doc.get("goodput") or {}).get("per_s"), doc.get("qps"), int(doc.get("requests_ok") or 0)
    if goodput is None or qps_noise is None or not qps or ok < 1:
        return None
    share = min(1.0, goodput / qps)
    return math.hypot(share * qps_noise, qps * math.sqrt(share * (1 - share) / ok))


def between_run_noise(values: Sequence[float | None]) -> float | None:
    """Spread of one figure over repeated runs (in run order); None with fewer than 3 values.

    Robust to a genuine step change in the series: the standard deviation is estimated from the
    median absolute difference between consecutive runs, 1.4826 * median|x[i+1] - x[i]| / sqrt(2),
    so one regression among many runs widens it by one difference only.
    """
    xs = [float(v) for v in values if v is not None]
    if len(xs) < 3:
        return None
    steps = sorted(abs(b - a) for a, b in zip(xs, xs[1:], strict=False))
    mid = len(steps) // 2
    median = steps[mid] if len(steps) % 2 else (steps[mid - 1] + steps[mid]) / 2
    return 1.4826 * median / math.sqrt(2)


def combine_noise(within: float | None, between: float | None) -> float | None:
    """The noise of one run's figure: the larger of the within-level and between-run estimates."""
    known = [x for x in (within, between) if x is not None]
    return max(known) if known else None


# ---------------------------------------------------------------------------------------------
# Differences


@dataclass(frozen=True)
class Delta:
    """A candidate's figure against the baseline's."""

    diff: float
    pct: float | None  # None when the baseline is 0
    better: bool | None  # None: no change
    significant: bool | None  # None: the noise of one side is unknown
    threshold: float | None  # |diff| must exceed this to be significant
    floor: float = MIN_RELATIVE_CHANGE  # the least relative change that could be significant

    @property
    def verdict(self) -> str:
        """'better', 'worse' (both beyond the noise), 'same' (within the noise) or 'unknown'."""
        if self.significant is None:
            return "unknown"
        if not self.significant or self.better is None:
            return "same"
        return "better" if self.better else "worse"

    def to_dict(self) -> dict:
        return {
            "diff": self.diff,
            "pct": self.pct,
            "better": self.better,
            "significant": self.significant,
            "threshold": self.threshold,
            "floor": self.floor,
            "verdict": self.verdict,
        }


def significance_threshold(noise_a: float | None, noise_b: float | None, k: float = K_SIGMA) -> float | None:
    """k times the combined standard error of a difference of two independent figures."""
    if noise_a is None or noise_b is None:
        return None
    return k * math.hypot(noise_a, noise_b)


def compare_values(metric: Metric, base: float, base_noise: float | None, value: float,
                   noise: float | None, k: float = K_SIGMA, floor: float = MIN_RELATIVE_CHANGE) -> Delta:
    """Difference, % change, direction and significance of `value` against `base`.

    Significant means beyond k combined standard errors and beyond `floor` (a share of the baseline;
    see change_floor)."""
    diff = value - base
    pct = diff / base * 100.0 if base else None
    threshold = significance_threshold(base_noise, noise, k)
    if threshold is not None:
        threshold = max(threshold, floor * abs(base))
    significant = None if threshold is None else abs(diff) > threshold
    return Delta(diff=diff, pct=pct, better=metric.better(diff), significant=significant, threshold=threshold,
                 floor=floor)


# ---------------------------------------------------------------------------------------------
# Capacities (docs/capacity.md): the highest load a run's search found within its SLO


def capacity_uncertainty(answer: Mapping) -> float:
    """The capacity's own uncertainty: the gap from the highest passing load to the lowest failing one
    (the true limit lies between them); 0 when no load failed (a capacity at the plan's highest load,
    which is a firm lower bound)."""
    load, fail = answer.get("load"), answer.get("lowest_fail")
    if load is None or fail is None:
        return 0.0
    return max(0.0, float(fail) - float(load))


def capacity_delta(base: Mapping | None, answer: Mapping | None, *, base_spread: float | None = None,
                   spread: float | None = None, k: float = K_SIGMA) -> dict:
    """A run's capacity against the baseline's: {"verdict", "diff", "pct", "threshold", "reason"}.

    The two capacities differ significantly when the difference exceeds the larger of: each answer's
    own uncertainty (capacity_uncertainty), `k` times the combined between-run spread of the two
    set-ups' capacities when both have three or more repeats (`base_spread`, `spread`: standard
    deviations), and a floor of UNREPEATED_RELATIVE_CHANGE["qps"] of the baseline capacity (or
    MIN_RELATIVE_CHANGE once both spreads are known). A run whose search found no load within the SLO
    is worse than a baseline that found one. Capacities under different SLOs or units, or one that
    stopped because the client was the limit (a lower bound only), are "unknown", with the reason."""
    out = {"verdict": "unknown", "diff": None, "pct": None, "threshold": None, "reason": ""}
    if not base or not answer:
        out["reason"] = "no capacity search"
        return out
    if (base.get("slo") or {}) != (answer.get("slo") or {}) or base.get("unit") != answer.get("unit"):
        out["reason"] = "the searches had other SLOs"
        return out
    for side, name in ((base, "the baseline's"), (answer, "this run's")):
        if side.get("status") == "client_bound":
            out["reason"] = f"{name} search stopped at the client's limit: its capacity is a lower bound"
            return out
    before, after = base.get("load"), answer.get("load")
    if before is None or after is None:
        if before is None and after is None:
            out.update(verdict="same", reason="no load met the SLO in either")
        elif after is None:
            out.update(verdict="worse", reason="no load met the SLO")
        else:
            out.update(verdict="better", reason="the baseline's search found no load within the SLO")
        return out
    diff = float(after) - float(before)
    repeated = base_spread is not None and spread is not None
    floor = MIN_RELATIVE_CHANGE if repeated else UNREPEATED_RELATIVE_CHANGE["qps"]
    threshold = max(capacity_uncertainty(base), capacity_uncertainty(answer), floor * abs(float(before)))
    if repeated:
        threshold = max(threshold, k * math.hypot(base_spread, spread))
    out.update(diff=diff, pct=diff / before * 100.0 if before else None, threshold=threshold)
    if abs(diff) <= threshold:
        out.update(verdict="same", reason="within the capacities' uncertainty")
    else:
        out.update(verdict="better" if diff > 0 else "worse", reason="beyond the capacities' uncertainty")
    return out


def capacity_change_text(delta: Mapping, slo_text: str) -> str:
    """'+18 % capacity at p99 ≤ 200 ms' (or 'capacity within ±5 req/s at ...', 'no capacity at ...')."""
    if delta.get("pct") is not None:
        return f"{delta['pct']:+.0f} % capacity at {slo_text}"
    if delta.get("verdict") == "worse":
        return f"no capacity at {slo_text}"
    return f"capacity {delta.get('reason') or 'not compared'} at {slo_text}"
