"""Telemetry inside a real sweep: the engine against the simulator, NVML asked for on a host without a
GPU and the simulator's vLLM-style /metrics scraped. The run succeeds, says once why there are no GPU
figures, and each level carries the server's queue, running requests and token count."""
import pytest

from benchmarks.simulator import running_simulator
from benchmarks.sweep import run_sweep
from benchmarks.telemetry import Telemetry
from tests.prerequisites import nvml_works


def test_sweep_with_telemetry_sources():
    # batches of two 32-token texts, 20 ms each: at eight clients, about six wait and two run
    with running_simulator(batch_ms=20, token_us=0, batch_wait_ms=0, max_batch_tokens=64) as sim:
        telemetry = Telemetry(gpus=[0], metrics_urls=[f"{sim.url}/metrics"], scrape_interval_s=0.25)
        doc = run_sweep(
            {"name": "sim", "flavor": "openai", "base_urls": [sim.base_url], "model": "sim-embed"},
            {"levels": [1, 8], "warmup_s": 0.5, "duration_s": 2, "tokens": 32, "dimensions": 64, "timeout_s": 5,
             "abort_error_rate": 1.0, "seed": 1},
            telemetry=telemetry,
        )
    assert doc["run"]["status"] == "succeeded"
    if nvml_works():
        assert all("gpu" in level for level in doc["levels"])
    else:
        assert [n for n in doc["telemetry_notes"] if n.startswith("GPU telemetry unavailable")] == [
            "GPU telemetry unavailable: NVML library not found (no NVIDIA driver installed on this host)"
        ]
        assert all("gpu" not in level and "energy" not in level for level in doc["levels"])
    low, high = doc["levels"]
    for level in (low, high):
        server = level["server"]
        assert server["engines"] == ["vllm"]
        assert server["samples"] >= 4
        client_tokens = round(level["tokens_per_s"] * level["duration_s"])
        assert server["client_prompt_tokens"] == client_tokens
        # the server counted about the tokens the client sent in the window
        assert server["prompt_tokens_ratio"] == pytest.approx(1.0, abs=0.2)
        assert all(p["t"] >= 0 for p in server["timeseries"])
    # one client never queues; eight fill at most the server's two batch slots and queue behind them.
    # On a starved host the simulator may take one text per batch at every scrape, so the running gauge is
    # bounded by the slots rather than pinned to 2 (load-independent: the slots and the clients set it)
    assert low["server"]["queue_depth"]["max"] == 0 and low["server"]["running"]["max"] <= 1
    assert 1 <= high["server"]["running"]["max"] <= 2
    assert high["server"]["queue_depth"]["max"] > 2
    # gauges that follow the load pass the cross-check and keep their figures
    assert high["server"]["gauges_followed"] is True and high["server"]["cross_checks"] == []


def test_gauges_that_stay_at_zero_under_load_are_named_and_not_shown():
    """A server whose /metrics says 0 running and 0 waiting while eight requests are in flight, each
    waiting several times an idle request's latency, and whose token counter never moves: the level
    names both, and their figures are withheld rather than shown as "mean 0, max 0"."""
    with running_simulator(batch_ms=20, token_us=0, batch_wait_ms=0, max_batch_tokens=64,
                           frozen_metrics=True) as sim:
        assert "vllm:num_requests_running" in sim.metrics_text()
        telemetry = Telemetry(metrics_urls=[f"{sim.url}/metrics"], scrape_interval_s=0.25)
        doc = run_sweep(
            {"name": "sim", "flavor": "openai", "base_urls": [sim.base_url], "model": "sim-embed"},
            {"levels": [1, 8], "warmup_s": 0.5, "duration_s": 2, "tokens": 32, "dimensions": 64, "timeout_s": 5,
             "abort_error_rate": 1.0, "seed": 1},
            telemetry=telemetry,
        )
    low, high = doc["levels"]
    # the condition the check needs, measured: eight in flight, latency far above an idle request's
    assert high["latency_ms"]["p50"] >= 2 * low["latency_ms"]["p50"]
    server = high["server"]
    assert server["gauges_followed"] is False
    assert server["running"] == {"mean": None, "max": None} and server["queue_depth"] == {"mean": None, "max": None}
    assert server["gauges_reported"]["running"]["max"] == 0
    assert all(p["running"] is None and p["queue_depth"] is None for p in server["timeseries"])
    named = [n for n in high["notes"] if "running/waiting gauges did not follow the 8 requests in flight" in n]
    assert named, high["notes"]
    # one request alone is no load to judge a gauge by
    assert "gauges_followed" not in low["server"]
    for level in (low, high):
        assert level["server"]["prompt_tokens_ratio"] is None
        assert level["server"]["tokens_counter_followed"] is False
        assert any("prompt token counter did not move" in n for n in level["notes"])
