"""Realistic result documents and stored runs for tests and the portal benchmark.

A level document is built the way the engine builds one: latency samples are drawn from a
log-normal model of a server whose latency grows with load, recorded into a real HdrHistogram
(microseconds, 1 us..3,600 s, 3 significant digits, encoded with `encode()`), and the
percentiles are read back from that histogram; the per-second timeline is drawn around the
level's throughput. A seed makes every document reproducible.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
from hdrh.histogram import HdrHistogram

HIST_LOWEST_US = 1
HIST_HIGHEST_US = 3_600 * 1_000_000
HIST_DIGITS = 3


def _histogram(latencies_ms: np.ndarray) -> HdrHistogram:
    hist = HdrHistogram(HIST_LOWEST_US, HIST_HIGHEST_US, HIST_DIGITS)
    # Record each distinct microsecond value once with its count: fast, and exact for HDR.
    values, counts = np.unique(np.clip(np.rint(latencies_ms * 1000), 1, HIST_HIGHEST_US).astype(np.int64),
                               return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        hist.record_value(value, count)
    return hist


def _percentiles(hist: HdrHistogram) -> dict:
    return {
        "mean": round(hist.get_mean_value() / 1000, 3),
        "p50": hist.get_value_at_percentile(50) / 1000,
        "p90": hist.get_value_at_percentile(90) / 1000,
        "p95": hist.get_value_at_percentile(95) / 1000,
        "p99": hist.get_value_at_percentile(99) / 1000,
        "p999": hist.get_value_at_percentile(99.9) / 1000,
        "max": hist.get_max_value() / 1000,
    }


def level_doc(index: int, concurrency: float, *, capacity_qps: float = 400.0, base_ms: float = 20.0,
              duration_s: float = 20.0, error_rate: float = 0.0, tokens: int = 512, seed: int = 0,
              gpu: bool = False) -> dict:
    """One closed-loop level document (embperf.run/1) of a server with `capacity_qps` and `base_ms`
    unloaded latency: throughput follows Little's law until it saturates, latency grows after."""
    rng = np.random.default_rng(seed * 1000 + index)
    unloaded_qps = concurrency / (base_ms / 1000)
    qps = capacity_qps * unloaded_qps / (capacity_qps + unloaded_qps) * rng.normal(1.0, 0.01)
    mean_ms = concurrency / qps * 1000
    seconds = int(duration_s)
    per_second = np.maximum(rng.normal(qps, qps * 0.04 + 1, seconds), 0).round().astype(int)
    total = int(per_second.sum())
    failed = int(round(total * error_rate))
    ok = total - failed
    sigma = 0.25 + 0.05 * np.log2(max(concurrency, 1))
    latencies = rng.lognormal(np.log(mean_ms) - sigma**2 / 2, sigma, max(total, 1))
    hist = _histogram(latencies)
    service = _histogram(latencies * 0.97)
    timeseries = []
    start = 0
    for t, n in enumerate(per_second.tolist()):
        chunk = latencies[start:start + n] if n else latencies[:1]
        start += n
        timeseries.append({
            "t": t + 1,
            "completed": n,
            "errors": int(round(n * error_rate)),
            "p50_ms": round(float(np.percentile(chunk, 50)), 3),
            "p99_ms": round(float(np.percentile(chunk, 99)), 3),
            "in_flight": int(concurrency),
        })
    errors = {"http_4xx": 0, "http_429": 0, "http_5xx": failed, "timeout": 0, "connect_error": 0,
              "invalid_response": 0}
    doc = {
        "index": index,
        "concurrency": concurrency,
        "rate": None,
        "status": "completed",
        "abort_reason": None,
        "started_at": (dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=index * 30)).isoformat(),
        "warmup_s": 2.0,
        "duration_s": float(seconds),
        "requests_started": total + int(concurrency),
        "requests_ok": ok,
        "requests_failed": failed,
        "in_flight_at_end": int(concurrency),
        "qps": round(ok / seconds, 3),
        "texts_per_s": round(ok / seconds, 3),
        "tokens_per_s": round(ok / seconds * tokens, 1),
        "tokens_estimated": False,
        "tokens_per_text": {"mean": tokens, "min": tokens, "max": tokens},
        "latency_ms": _percentiles(hist),
        "service_ms": _percentiles(service),
        "schedule": None,
        "errors": errors,
        "error_rate": round(failed / total, 6) if total else 0.0,
        "error_examples": {"http_5xx": "HTTP 503: overloaded"} if failed else {},
        "timeseries": timeseries,
        "client": {"loop_lag_p99_ms": 1.2, "cpu_percent": 35.0, "client_bound": False, "client_bound_reason": None},
        "histogram": hist.encode().decode("ascii"),
        "service_histogram": service.encode().decode("ascii"),
        "telemetry_notes": [],
    }
    if gpu:
        util = min(99.0, 100.0 * qps / capacity_qps)
        doc["gpu"] = {
            "source": "nvml",
            "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "utilization_mean": round(util, 1),
                      "utilization_max": round(min(util + 5, 100), 1), "memory_utilization_mean": 30.0,
                      "sm_active_mean": round(util * 0.7, 1), "memory_used_peak_mib": 20480,
                      "memory_total_mib": 81559, "power_mean_w": round(150 + 4 * util, 1),
                      "energy_j": round((150 + 4 * util) * seconds, 1), "sm_clock_mean_mhz": 1980,
                      "temperature_max_c": 61, "throttle_reasons": [], "samples": seconds * 2}],
            "timeseries": [{"t": t + 0.5, "gpu": 0, "util": round(util, 1), "sm_active": round(util * 0.7, 1),
                            "mem_used_mib": 20480, "power_w": round(150 + 4 * util, 1), "sm_clock_mhz": 1980}
                           for t in range(seconds)],
        }
        joules = (150 + 4 * util) * seconds
        doc["energy"] = {"joules": round(joules, 1), "joules_per_request": round(joules / max(ok, 1), 4),
                         "joules_per_1k_tokens": round(joules / max(ok * tokens, 1) * 1000, 4)}
    return doc


def level_docs(levels=(1, 4, 8, 16, 32, 64), **kwargs) -> list[dict]:
    """Level documents for a whole closed-loop plan."""
    return [level_doc(i, c, **kwargs) for i, c in enumerate(levels)]


def stored_run(*, target, plan, docs: list[dict] | None = None, label: str = "", notes: str = "",
               server_config: dict | None = None, created: dt.datetime | None = None,
               status: str = "succeeded", **level_kwargs):
    """A finished Run in the database with its levels recorded through documents.record_level."""
    from benchmarks.document import summarize
    from portal.sweeps.documents import record_level
    from portal.sweeps.models import Run
    from portal.sweeps.services import create_run

    run = create_run(target=target, plan=plan, label=label, notes=notes, server_config=server_config)
    docs = docs if docs is not None else level_docs(plan.levels or (1, 4, 8, 16, 32, 64), **level_kwargs)
    for doc in docs:
        record_level(run, doc)
    # The summary the engine writes at the end of a sweep.
    run.summary = summarize(docs, plan.slo_p99_ms)
    run.status = status
    run.worker_host = "bench-01"
    run.client_version = "0.1.0"
    run.document = {"client": {"version": "0.1.0", "host": "bench-01", "python": "3.11", "cpu_count": 16,
                               "processes": 1}, "telemetry_notes": []}
    when = created or dt.datetime.now(dt.UTC)
    run.started = when
    run.finished = when + dt.timedelta(minutes=len(docs))
    run.save()
    if created is not None:
        Run.objects.filter(pk=run.pk).update(created=created)
        run.created = created
    if run.status == Run.Status.SUCCEEDED:
        run.judge()  # as recording the worker's document does
    return run
