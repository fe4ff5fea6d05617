"""Capacity under an SLO against the simulator, whose batching gives a throughput ceiling we can compute.

The simulator runs batches one after another, each for `batch_ms + token_us × tokens` after a
`batch_wait_ms` pause, holding as many requests as fit in `max_batch_tokens`.

Open loop (TOKEN_SERVER): no fixed cost per batch, so with s = token_us × tokens of work per request
the server does 1 / s requests per second at most. Each batch takes every request that arrived during
the one before, so at rho = rate × s a batch lasts rho times the one before it. Below the ceiling
(rho < 1) a request waits for at most the running batch and its own, about 2 s. Above it the batches
grow; after T seconds of the level (warm-up and window) a batch lasts s + (rho - 1) × T, and a request
that just missed the one running waits (1 + 1 / rho) times that. That latency reaches the SLO at a
rate we can compute: the true limit under that SLO for levels of that length.

Closed loop (SERVER): 10 requests per batch of 200 ms; c requests in flight take ceil(c / 10)
batches per round, so the latency is that many batch times.
"""
import json
import math

import jsonschema
import pytest

from benchmarks import capacity, stats
from benchmarks.document import SCHEMA_PATH
from benchmarks.errors import ConfigError
from benchmarks.plan import PlanLimits, normalize_plan, planned_seconds
from benchmarks.simulator import running_simulator
from benchmarks.sweep import run_sweep

TOKENS = 32
PER_BATCH = 10
BATCH_S = 0.2
WAIT_S = 0.001
# Room for PER_BATCH texts of TOKENS (± 1 token of calibration), never for one more.
SERVER = {"batch_ms": BATCH_S * 1000, "batch_wait_ms": WAIT_S * 1000, "token_us": 0,
          "max_batch_tokens": PER_BATCH * TOKENS + TOKENS // 2, "native_dimensions": 16}
CEILING = PER_BATCH / (BATCH_S + WAIT_S)  # requests/s
SLO_MS = 500.0  # 2.5 batch times: met by 2 batches per round, broken by 3
PRECISION = 0.1

TOKEN_US = 1562.5  # 50 ms of work for a text of 32 tokens: 20 requests/s at most
TOKEN_SERVER = {"batch_ms": 0, "batch_wait_ms": 0, "token_us": TOKEN_US, "max_batch_tokens": 1_000_000,
                "native_dimensions": 16}
OPEN_SLO_MS = 600.0  # well above the 2 s a request takes below the ceiling: the margin a busy host needs


def open_loop_limit(work_s: float, level_s: float, slo_s: float) -> float:
    """The arrival rate at which the latency at the end of a level reaches the SLO (module docstring)."""
    def latency(rho):
        return (1 + 1 / rho) * (work_s + (rho - 1) * level_s)

    low, high = 1.0, 10.0
    assert latency(low) < slo_s < latency(high)
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if latency(mid) < slo_s else (low, mid)
    return low / work_s


def target(sim):
    return {"name": "sim", "flavor": "openai", "base_urls": [sim.base_url], "model": "sim-embed"}


def capacity_plan(**overrides):
    base = {"search": "capacity", "mode": "open", "arrival": "constant", "warmup_s": 0.5, "duration_s": 1.5,
            "tokens": TOKENS, "dimensions": 16, "timeout_s": 5, "abort_error_rate": 1.0, "seed": 3,
            "slo_p99_ms": SLO_MS, "capacity_precision": PRECISION, "capacity_trials": 2,
            # One text, sent again and again: every request has the same token count, so exactly
            # PER_BATCH of them fit in a batch (unique texts vary by a few tokens).
            "input": "repeat"}
    base.update(overrides)
    return base


@pytest.fixture
def server_bound(monkeypatch):
    # The test host is shared and busy: its load process may be judged client-bound at any level,
    # which would (rightly) stop the search. These tests measure the server's limit; the client
    # limit has its own test below.
    monkeypatch.setattr(capacity, "client_bound", lambda level: False)


def assert_valid(doc):
    schema = json.loads(SCHEMA_PATH.read_text())
    errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(json.loads(json.dumps(doc)))]
    assert errors == []


def assert_search_record(doc, slo_ms=SLO_MS):
    """Every probed level is stored in the order it ran, with why it was chosen and its goodput."""
    levels = doc["levels"]
    assert [lv["index"] for lv in levels] == list(range(len(levels)))
    assert [lv["capacity_step"]["step"] for lv in levels] == [i + 1 for i in range(len(levels))]
    assert levels[0]["capacity_step"]["phase"] == "synchronous" and levels[0]["concurrency"] == 1
    for level in levels:
        step = level["capacity_step"]
        assert step["reason"] and step["outcome"] in ("pass", "fail")
        assert (step["outcome"] == "fail") == bool(step["breaches"])
        assert level["goodput"]["limit_ms"] == slo_ms
        assert level["goodput"]["per_s"] <= level["qps"] + 1e-9
    assert doc["capacity"]["levels_run"] == len(levels)


def assert_tokens_as_planned(doc):
    # The ceiling assumes PER_BATCH texts per batch: each text has TOKENS ± 1 tokens.
    for level in doc["levels"]:
        tokens = level["tokens_per_text"]
        assert tokens["min"] == tokens["max"] and abs(tokens["min"] - TOKENS) <= 1
        assert (PER_BATCH * TOKENS + TOKENS // 2) // tokens["min"] == PER_BATCH


def test_open_loop_capacity_is_the_computed_limit_within_the_precision(server_bound):
    plan = capacity_plan(slo_p99_ms=OPEN_SLO_MS, duration_s=2.0)
    with running_simulator(**TOKEN_SERVER) as sim:
        doc = run_sweep(target(sim), plan)
    assert_valid(doc)
    assert_search_record(doc, OPEN_SLO_MS)
    tokens = doc["levels"][0]["tokens_per_text"]
    assert tokens["min"] == tokens["max"] and abs(tokens["min"] - TOKENS) <= 1
    work_s = TOKEN_US * tokens["min"] / 1e6
    expected = open_loop_limit(work_s, plan["warmup_s"] + plan["duration_s"], OPEN_SLO_MS / 1000)
    cap = doc["capacity"]
    assert cap["status"] == "found", cap["reason"]
    assert cap["unit"] == "rate" and cap["binding"] == "p99"
    assert expected * (1 - PRECISION) <= cap["load"] <= expected * (1 + PRECISION)
    assert cap["lowest_fail"] > cap["load"]
    assert cap["uncertainty"]["share"] <= PRECISION + 1e-9
    assert cap["confirmed"] is True
    # The answer passed its trials; the figures are those of its last trial.
    trials = [lv for lv in doc["levels"] if lv["rate"] == cap["load"]]
    assert len(trials) >= 2 and all(lv["capacity_step"]["outcome"] == "pass" for lv in trials)
    assert cap["figures"]["qps"] == doc["levels"][cap["level_index"]]["qps"]
    assert cap["figures"]["latency_ms"]["p99"] <= OPEN_SLO_MS
    assert cap["figures"]["goodput_per_s"] == doc["levels"][cap["level_index"]]["goodput"]["per_s"]
    # Open loop probes arrival rates after the synchronous level.
    assert all(lv["rate"] is not None for lv in doc["levels"][1:])
    phases = [lv["capacity_step"]["phase"] for lv in doc["levels"]]
    assert "probe" in phases and "bisect" in phases
    # The server kept its pace past the ceiling: latency crept up, no cliff.
    assert cap["cliff"] is False
    # The verdict judges the capacity, not the levels the search failed on purpose.
    assert doc["run"]["verdict"] == "passed", doc["run"]["verdict_reasons"]


def test_closed_loop_capacity_is_the_batches_the_slo_allows(server_bound):
    # ceil(c / 10) batch times must stay within 500 ms: at most 2 batches, so 20 requests in flight.
    expected = PER_BATCH * math.floor(SLO_MS / 1000 / (BATCH_S + WAIT_S))
    with running_simulator(**SERVER) as sim:
        doc = run_sweep(target(sim), capacity_plan(mode="closed"))
    assert_valid(doc)
    assert_search_record(doc)
    assert_tokens_as_planned(doc)
    cap = doc["capacity"]
    assert cap["status"] == "found", cap["reason"]
    assert cap["unit"] == "concurrency" and cap["binding"] == "p99"
    assert abs(cap["load"] - expected) <= max(1, math.floor(PRECISION * expected))
    assert cap["lowest_fail"] - cap["load"] <= max(1, math.floor(PRECISION * cap["load"]))
    assert all(isinstance(lv["concurrency"], int) and lv["rate"] is None for lv in doc["levels"])


def test_error_rate_binds_when_the_server_fails_past_a_rate(server_bound):
    # Failure injection that starts above 30 req/s (set as each level begins), with a latency limit
    # the server meets at any rate tried here.
    limit = 30.0
    with running_simulator(**SERVER, seed=5) as sim:
        def on_progress(progress):
            load = progress["load"]
            sim.config.error_rate = 0.2 if load is not None and load > limit else 0.0

        doc = run_sweep(target(sim), capacity_plan(slo_p99_ms=5000, slo_error_rate=0.05), on_progress=on_progress)
    assert_valid(doc)
    cap = doc["capacity"]
    assert cap["status"] == "found", cap["reason"]
    assert cap["binding"] == "error_rate"
    assert limit / (1 + PRECISION) <= cap["load"] <= limit
    assert any("error rate" in text for text in cap["lowest_fail_breaches"])
    assert cap["cliff"] is True and "error rate" in cap["cliff_reason"]
    failed = doc["levels"][cap["lowest_fail_index"]]
    assert failed["rate"] == cap["lowest_fail"] and failed["error_rate"] > 0.05


def test_client_bound_level_stops_the_search(monkeypatch):
    # From 20 req/s the client is judged the limit: that level is no pass or fail of the server.
    monkeypatch.setattr(capacity, "client_bound", lambda level: (level["rate"] or 0) >= 20)
    with running_simulator(**SERVER) as sim:
        doc = run_sweep(target(sim), capacity_plan())
    assert_valid(doc)
    cap = doc["capacity"]
    assert cap["status"] == "client_bound" and cap["binding"] == "client"
    last = doc["levels"][-1]
    assert last["rate"] >= 20 and last["capacity_step"]["outcome"] == "client-bound"
    assert cap["client_bound_load"] == last["rate"]
    # Nothing ran after it; the answer is the highest pass below it, a lower bound not yet repeated.
    assert cap["load"] == max(lv["rate"] for lv in doc["levels"][1:-1])
    assert cap["load"] < 20 and cap["confirmed"] is False
    assert cap["lowest_fail"] is None
    assert "client" in cap["reason"]


def test_no_load_meets_an_slo_below_the_unloaded_latency(server_bound):
    with running_simulator(**SERVER) as sim:
        doc = run_sweep(target(sim), capacity_plan(slo_p99_ms=50))
    cap = doc["capacity"]
    assert cap["status"] == "none" and cap["load"] is None
    assert len(doc["levels"]) == 1 and doc["levels"][0]["capacity_step"]["outcome"] == "fail"
    assert "one request at a time" in cap["reason"]
    assert doc["run"]["verdict"] == "failed" and "no capacity" in doc["run"]["verdict_reasons"][-1]
    assert_valid(doc)


def test_goodput_on_every_level_of_a_plan_with_an_slo():
    fixed = {"batch_ms": 0, "token_us": 0, "batch_wait_ms": 0, "delay_ms": 50, "native_dimensions": 16}
    base = {"levels": [1, 2], "warmup_s": 0.2, "duration_s": 1.0, "tokens": 16, "dimensions": 16,
            "timeout_s": 5, "abort_error_rate": 1.0, "seed": 1}
    with running_simulator(**fixed) as sim:
        met = run_sweep(target(sim), {**base, "slo_p99_ms": 1000})
        missed = run_sweep(target(sim), {**base, "slo_p50_ms": 20})
        none = run_sweep(target(sim), base)
    for level in met["levels"]:
        # Every request took about 50 ms: all of them met 1 s.
        assert level["goodput"] == {"limit_ms": 1000, "requests": level["requests_ok"],
                                    "per_s": level["qps"],
                                    "share": 1.0}
    for level in missed["levels"]:
        assert level["goodput"]["limit_ms"] == 20 and level["goodput"]["requests"] == 0
        assert level["goodput"]["per_s"] == 0 and level["requests_ok"] > 0
    assert all("goodput" not in level for level in none["levels"])
    assert "capacity" not in met and all("capacity_step" not in lv for lv in met["levels"])
    assert_valid(met)


def test_histogram_count_at_or_below_a_limit():
    hist = stats.new_histogram()
    for seconds in (0.001, 0.05, 0.1, 0.2, 0.3):
        stats.record_seconds(hist, seconds)
    assert stats.count_at_or_below_us(hist, 150_000) == 3
    assert stats.count_at_or_below_us(hist, 250_000) == 4
    assert stats.count_at_or_below_us(hist, 10**9) == 5
    assert stats.count_at_or_below_us(stats.new_histogram(), 10) == 0


def test_capacity_plan_rule():
    with pytest.raises(ConfigError, match="needs an SLO"):
        normalize_plan({"search": "capacity", "mode": "open"})
    limits = PlanLimits(max_concurrency=64, max_rate=500, max_run_seconds=600)
    with pytest.raises(ConfigError, match="at most 64 concurrency"):
        normalize_plan({"search": "capacity", "mode": "closed", "slo_p99_ms": 100, "capacity_max_load": 100},
                       limits)
    plan = normalize_plan({"search": "capacity", "mode": "open", "slo_p99_ms": 100}, limits)
    assert plan["capacity_max_load"] == 500 and plan["capacity_budget_s"] == 600
    assert plan["capacity_trials"] == 2 and plan["capacity_precision"] == 0.05
    # The task's time limit covers the budget and the level running when it ends.
    assert planned_seconds(plan) == 600 + plan["warmup_s"] + plan["duration_s"] + plan["timeout_s"]
    with pytest.raises(ConfigError, match="EMBPERF_MAX_RUN_SECONDS"):
        normalize_plan({"search": "capacity", "slo_p99_ms": 100, "capacity_budget_s": 601}, limits)

