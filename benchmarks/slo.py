"""A plan's service-level objective (SLO): whether one level met it, and its goodput.

The SLO is read from the plan's fields (`slo_p99_ms`, `slo_p90_ms`, `slo_p50_ms`, `slo_mean_ms`,
`slo_error_rate`, `slo_goodput_share`; benchmarks/plan.py). A level meets it when every limit that
is set holds. Goodput is the requests per second whose own latency met the SLO's latency limit,
counted from the level's latency histogram (docs/capacity.md).
"""
from collections.abc import Mapping
from dataclasses import dataclass

from benchmarks import stats
from benchmarks.plan import SLO_LATENCY_FIELDS

# When a capacity search's SLO names no error rate, a level passes with at most this share failed.
DEFAULT_ERROR_RATE = 0.01


@dataclass(frozen=True)
class Slo:
    """The limits of one plan's SLO; None for each limit the plan does not set."""

    latency_ms: dict  # the level's latency key ("p99", "p90", "p50", "mean") -> its limit in ms
    error_rate: float | None = None
    goodput_share: float | None = None

    @classmethod
    def from_plan(cls, plan: Mapping, *, default_error_rate: float | None = None) -> "Slo":
        """The plan's SLO; `default_error_rate` stands in when the plan sets no error rate."""
        latency = {key: float(plan[name]) for name, key in SLO_LATENCY_FIELDS.items() if plan.get(name) is not None}
        error_rate = plan.get("slo_error_rate")
        return cls(latency_ms=latency, error_rate=default_error_rate if error_rate is None else error_rate,
                   goodput_share=plan.get("slo_goodput_share"))

    @property
    def goodput_limit_ms(self) -> float | None:
        """The latency a single request must meet to count as goodput: the p99 limit, or else the
        p90, p50 or mean limit, in that order (None when the SLO bounds no latency)."""
        for key in ("p99", "p90", "p50", "mean"):
            if key in self.latency_ms:
                return self.latency_ms[key]
        return None

    def to_dict(self) -> dict:
        """The SLO as the result document shows it."""
        return {**{f"{key}_ms": limit for key, limit in self.latency_ms.items()},
                "error_rate": self.error_rate, "goodput_share": self.goodput_share}

    def breaches(self, level: Mapping) -> list[dict]:
        """Each limit the level broke: `constraint` (`p99`, `p90`, `p50`, `mean`, `error_rate`,
        `goodput_share`), `value`, `limit`, `text`; an empty list when the level met the SLO."""
        out = []
        latency = level.get("latency_ms") or {}
        for key, limit in self.latency_ms.items():
            value = latency.get(key)
            if value is None:
                out.append({"constraint": key, "value": None, "limit": limit,
                            "text": f"{key}: no request succeeded (limit {limit:g} ms)"})
            elif value > limit:
                out.append({"constraint": key, "value": value, "limit": limit,
                            "text": f"{key} {value:g} ms > {limit:g} ms"})
        if self.error_rate is not None and level.get("error_rate", 0.0) > self.error_rate:
            out.append({"constraint": "error_rate", "value": level["error_rate"], "limit": self.error_rate,
                        "text": f"error rate {level['error_rate']:.2%} > {self.error_rate:.2%}"})
        if self.goodput_share is not None:
            share = (level.get("goodput") or {}).get("share")
            if share is None or share < self.goodput_share:
                shown = "none" if share is None else f"{share:.1%}"
                out.append({"constraint": "goodput_share", "value": share, "limit": self.goodput_share,
                            "text": f"goodput share {shown} < {self.goodput_share:.1%}"})
        if level.get("status") == "aborted" and not any(b["constraint"] == "error_rate" for b in out):
            out.append({"constraint": "error_rate", "value": level.get("error_rate"), "limit": self.error_rate,
                        "text": f"stopped by the abort policy: {level.get('abort_reason')}"})
        return out


def goodput(level: Mapping, limit_ms: float, timeout_s: float) -> dict:
    """The level's goodput: successful requests whose latency was at most `limit_ms`.

    Counted from the level's latency histogram (3 significant digits; a request in a bucket that
    reaches past the limit is not counted). The histogram also holds the timeouts, each with the
    time it waited (at least `timeout_s`): when the limit is at or above the timeout they are
    taken off, so the count is then a lower bound. `per_s` is the level's requests/s (`qps`) times
    the share of its successful requests that met the limit, so it is never above `qps`; `share`
    is of the attempted requests."""
    hist = stats.decode(level["histogram"])
    within = stats.count_at_or_below_us(hist, limit_ms * 1000)
    if limit_ms >= timeout_s * 1000:
        within = max(0, within - level["errors"].get("timeout", 0))
    within = min(within, level["requests_ok"])
    ok = level["requests_ok"]
    attempted = ok + level["requests_failed"]
    return {
        "limit_ms": limit_ms,
        "requests": within,
        "per_s": round(level["qps"] * within / ok, 3) if ok else 0.0,
        "share": round(within / attempted, 6) if attempted else None,
    }


def limit_text(slo: Mapping) -> str:
    """An SLO's limits in one line: 'p99 ≤ 200 ms, error rate ≤ 1.00%'."""
    return ", ".join(limit_lines(slo))


def limit_lines(slo: Mapping) -> list[str]:
    """An SLO's limits in a reader's words ("p99 ≤ 500 ms", "error rate ≤ 1.00%"), from `Slo.to_dict()`
    or a plan's fields."""
    lines = []
    for key in ("p99", "p90", "p50", "mean"):
        value = slo.get(f"{key}_ms", slo.get(f"slo_{key}_ms"))
        if value is not None:
            lines.append(f"{key} ≤ {value:g} ms")
    error_rate = slo.get("error_rate", slo.get("slo_error_rate"))
    if error_rate is not None:
        lines.append(f"error rate ≤ {error_rate:.2%}")
    share = slo.get("goodput_share", slo.get("slo_goodput_share"))
    if share is not None:
        lines.append(f"goodput share ≥ {share:.1%}")
    return lines

