"""Every kind of failure lands in its own class, with an example message per level."""
import asyncio
import queue
import socket
import threading
import time

import pytest

from benchmarks.flavors import make_flavor, request_headers
from benchmarks.inputs import InputSource
from benchmarks.loadgen import LevelRunner
from benchmarks.simulator import running_simulator
from benchmarks.sweep import run_sweep

FIXED = {"batch_ms": 0, "token_us": 0, "batch_wait_ms": 0, "delay_ms": 5}


def sweep_with_fault(sim, fault: dict, **plan_overrides) -> dict:
    """Probe and calibrate against a healthy simulator, then switch the fault on for the level."""
    def switch(progress):
        if progress["phase"] != "probe":
            for name, value in fault.items():
                setattr(sim.config, name, value)

    plan = {"levels": [2], "warmup_s": 0.2, "duration_s": 1, "tokens": 16, "dimensions": 32, "timeout_s": 5,
            "abort_error_rate": 1.0}
    plan.update(plan_overrides)
    return run_sweep({"flavor": "openai", "base_urls": [sim.base_url], "model": "sim-embed"}, plan,
                     on_progress=switch)["levels"][0]


@pytest.mark.parametrize(
    ("fault", "outcome", "example"),
    [
        ({"error_rate": 1.0}, "http_5xx", "HTTP 500: Internal server error (simulated)."),
        ({"rate_limit_rate": 1.0}, "http_429", "HTTP 429: Rate limit reached (simulated)."),
        ({"reset_rate": 1.0}, "connect_error", ""),
        ({"wrong_dimensions_rate": 1.0}, "invalid_response", "embedding 0 has 31 values, expected 32"),
        ({"nan_rate": 1.0}, "invalid_response", "embedding 0 holds null"),
        ({"model": "other-model"}, "http_4xx", "HTTP 404: The model `sim-embed` does not exist."),
    ],
)
def test_fault_lands_in_its_class(fault, outcome, example):
    with running_simulator(**FIXED) as sim:
        level = sweep_with_fault(sim, fault)
    assert level["requests_ok"] == 0
    assert level["requests_failed"] > 10
    assert level["errors"][outcome] == level["requests_failed"]
    assert level["error_rate"] == 1.0
    assert level["qps"] == 0
    assert level["error_examples"][outcome].startswith(example)
    # Failed requests never count as latency (except timeouts, see below).
    assert level["latency_ms"]["p50"] is None


def test_partial_faults_give_the_matching_error_rate():
    with running_simulator(seed=7, **FIXED) as sim:
        level = sweep_with_fault(sim, {"error_rate": 0.2, "wrong_dimensions_rate": 0.0}, duration_s=2)
    total = level["requests_ok"] + level["requests_failed"]
    assert level["error_rate"] == pytest.approx(level["errors"]["http_5xx"] / total, abs=1e-6)
    assert level["error_rate"] == pytest.approx(0.2, abs=0.08)
    assert level["latency_ms"]["p50"] is not None


def test_timeouts_are_timeouts_and_keep_their_latency():
    with running_simulator(**FIXED) as sim:
        def stall(progress):
            if progress["phase"] != "probe":
                sim.stall_now(30)

        level = run_sweep({"flavor": "openai", "base_urls": [sim.base_url], "model": "sim-embed"},
                          {"levels": [2], "warmup_s": 0, "duration_s": 1, "tokens": 16, "timeout_s": 0.4,
                           "abort_error_rate": 1.0}, on_progress=stall)["levels"][0]
        sim.stall_now(0)
    assert level["errors"]["timeout"] == level["requests_failed"] > 0
    assert level["requests_ok"] == 0
    # A timed-out request waited the timeout: that wait stays visible in the latency. (The event loop's
    # timers tick in milliseconds, so a timeout may fire up to 1 ms before 400 ms by the precise clock.)
    assert level["latency_ms"]["p50"] >= 399
    assert "0.4 s" in level["error_examples"]["timeout"]


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_level_directly(urls, *, mode="closed", **work):
    """Drive one LevelRunner without a sweep (no probe), for targets a probe would refuse."""
    flavor = make_flavor("openai", "sim-embed", dimensions=8)
    spec = {"index": 0, "mode": mode, "concurrency": 2, "t0": time.perf_counter() + 0.05, "warmup_s": 0,
            "duration_s": 1.0, "timeout_s": 2, "dims": 8, "keep_samples": False, "tokens_per_text_estimate": 10}
    spec.update(work)
    out = queue.Queue()
    runner = LevelRunner(spec, proc=0, flavor=flavor, urls=[flavor.url(u) for u in urls],
                         headers=request_headers(None), inputs=InputSource("unique", chars_per_text=40, seed=1),
                         out=out, stop_event=threading.Event())
    return asyncio.run(runner.run())


def test_dead_port_is_a_connect_error():
    partial = run_level_directly([f"http://127.0.0.1:{dead_port()}/v1"])
    counts = partial["counts"]
    assert counts["connect_error"] > 10
    assert sum(counts.values()) == counts["connect_error"]
    assert "Cannot connect" in partial["examples"]["connect_error"] or "refused" in partial["examples"][
        "connect_error"].lower()


def test_replicas_are_used_round_robin():
    with running_simulator(**FIXED) as a, running_simulator(**FIXED) as b:
        partial = run_level_directly([a.base_url, b.base_url], concurrency=1)
        served_a, served_b = a.stats.requests, b.stats.requests
    assert partial["counts"]["ok"] > 20
    assert abs(served_a - served_b) <= 1
