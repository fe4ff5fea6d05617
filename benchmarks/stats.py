"""Latency statistics: the one place that computes percentiles.

Every latency is recorded in microseconds into an HdrHistogram (lowest 1 µs, highest 3,600 s,
3 significant digits). Histograms travel between processes and into the result document in the
`hdrhistogram` package's encoded form (base64 of the compressed V2 format) and merge exactly.
Token counts per text go into a histogram of their own that holds every whole number from 1 to
COUNT_HIGHEST exactly: it records a count less one (4 significant digits give unit buckets from 0
to 32,767), and `count_summary` adds the one back.
"""
from collections.abc import Iterable

import numpy as np
from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3600 * 1_000_000
SIGNIFICANT_DIGITS = 3

# Percentile keys of the result document and the percentile each stands for.
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0), ("p999", 99.9))


COUNT_HIGHEST = 32_768
COUNT_SIGNIFICANT_DIGITS = 4


def new_count_histogram() -> HdrHistogram:
    """An empty histogram of whole counts (tokens per text), each value from 1 to COUNT_HIGHEST exact."""
    return HdrHistogram(1, COUNT_HIGHEST, COUNT_SIGNIFICANT_DIGITS)


def record_count(hist: HdrHistogram, count: int) -> None:
    """Record one whole count (clamped into 1..COUNT_HIGHEST) into a count histogram."""
    hist.record_value(min(max(int(count), 1), COUNT_HIGHEST) - 1)


def merge_counts(encoded: Iterable[str | None]) -> HdrHistogram:
    """One count histogram holding every value of the given encoded count histograms."""
    return merge(encoded, empty=new_count_histogram)


def count_summary(hist: HdrHistogram) -> dict:
    """`p50`, `p90`, `max`, `mean` and `n` of a count histogram (the percentiles and max None when empty)."""
    n = hist.get_total_count()
    if n == 0:
        return {"p50": None, "p90": None, "max": None, "mean": None, "n": 0}
    return {"p50": hist.get_value_at_percentile(50.0) + 1, "p90": hist.get_value_at_percentile(90.0) + 1,
            "max": hist.get_max_value() + 1, "mean": round(mean_us(hist) + 1, 2), "n": n}


def new_histogram() -> HdrHistogram:
    """An empty latency histogram in microseconds."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_seconds(hist: HdrHistogram, seconds: float) -> None:
    """Record one duration given in seconds (clamped into the histogram's range)."""
    us = int(seconds * 1_000_000)
    if us < LOWEST_US:
        us = LOWEST_US
    elif us > HIGHEST_US:
        us = HIGHEST_US
    hist.record_value(us)


def encode(hist: HdrHistogram) -> str:
    """The histogram as text for JSON (base64 of the compressed V2 format)."""
    return hist.encode().decode("ascii")


def decode(text: str) -> HdrHistogram:
    """Inverse of `encode`."""
    return HdrHistogram.decode(text.encode("ascii") if isinstance(text, str) else text)


def merge(encoded: Iterable[str | None], *, empty=None) -> HdrHistogram:
    """One histogram holding every value of the given encoded histograms (exact: counts add), added into
    `empty()` (a new latency histogram by default)."""
    total = (empty or new_histogram)()
    for text in encoded:
        if text:
            total.add(decode(text))
    return total


def mean_us(hist: HdrHistogram) -> float:
    """Mean of the recorded values (microseconds, or a count histogram's values), as HdrHistogram
    defines it (each value at the middle of its bucket), visiting only non-empty buckets: the
    package's own iterator is far too slow for histograms of a long level."""
    total_count = hist.get_total_count()
    if total_count == 0:
        return 0.0
    counts = np.ctypeslib.as_array(hist.counts)[: hist.counts_len]
    total = 0
    for index in np.flatnonzero(counts).tolist():
        value = hist.get_value_from_index(index)
        low = hist.get_lowest_equivalent_value(value)
        size = hist.get_highest_equivalent_value(value) - low + 1
        total += int(counts[index]) * (low + (size >> 1))
    return total / total_count


def summary_ms(hist: HdrHistogram) -> dict:
    """`mean`, `p50` … `p999`, `max` in milliseconds; all None when nothing was recorded."""
    keys = ["mean", *(k for k, _ in PERCENTILES), "max"]
    if hist.get_total_count() == 0:
        return dict.fromkeys(keys)
    out = {"mean": round(mean_us(hist) / 1000, 3)}
    for key, pct in PERCENTILES:
        out[key] = round(hist.get_value_at_percentile(pct) / 1000, 3)
    out["max"] = round(hist.get_max_value() / 1000, 3)
    return out


def percentile_ms(hist: HdrHistogram, pct: float) -> float | None:
    """One percentile in milliseconds, or None for an empty histogram."""
    if hist.get_total_count() == 0:
        return None
    return round(hist.get_value_at_percentile(pct) / 1000, 3)


def count_at_or_below_us(hist: HdrHistogram, limit_us: float) -> int:
    """How many recorded values were at most `limit_us` microseconds: the buckets whose every
    value is within the limit (a bucket that reaches past it is left out, so the count never
    includes a value above the limit)."""
    if hist.get_total_count() == 0:
        return 0
    counts = np.ctypeslib.as_array(hist.counts)[: hist.counts_len]
    total = 0
    for index in np.flatnonzero(counts).tolist():
        value = hist.get_value_from_index(index)
        if hist.get_highest_equivalent_value(value) <= limit_us:
            total += int(counts[index])
    return total
