"""The sweep against the simulator: the numbers it reports are the numbers the server produced."""
import json
import threading

import jsonschema
import pytest

from benchmarks import stats
from benchmarks.control import CancelToken
from benchmarks.document import SCHEMA_PATH
from benchmarks.errors import ConfigError, SweepError
from benchmarks.simulator import running_simulator
from benchmarks.sweep import run_sweep

# A server whose every request takes exactly `delay_ms` (no batching cost): service time is known.
FIXED = {"batch_ms": 0, "token_us": 0, "batch_wait_ms": 0}


def target(sim, flavor="openai", **extra):
    base = sim.base_url if flavor == "openai" else sim.url
    return {"name": "sim", "flavor": flavor, "base_urls": [base], "model": "sim-embed", **extra}


def plan(**overrides):
    base = {"levels": [2], "warmup_s": 0.3, "duration_s": 1.5, "tokens": 32, "dimensions": 64,
            "timeout_s": 5, "abort_error_rate": 1.0, "seed": 1}
    base.update(overrides)
    return base


@pytest.mark.parametrize("concurrency", [1, 4])
def test_closed_loop_gives_concurrency_over_service_time(concurrency):
    service_s = 0.05
    with running_simulator(delay_ms=service_s * 1000, **FIXED) as sim:
        doc = run_sweep(target(sim), plan(levels=[concurrency], duration_s=2))
    level = doc["levels"][0]
    # Independent of the machine's load: on a busy host the simulator's sleeps overrun and requests take
    # longer than `service_s`, so requests/s is checked against the latency the sweep measured. Little's law:
    # requests/s x mean latency is the mean number in flight, the concurrency less the client's turnaround
    # between an answer and the next request, which a loaded machine stretches: exact from above (10 % for
    # the requests cut by the window's edges), a wide margin from below. Latency is bounded from below only.
    assert concurrency * 0.5 <= level["qps"] * level["latency_ms"]["mean"] / 1000 <= concurrency * 1.10
    assert level["latency_ms"]["p50"] >= service_s * 1000
    assert level["requests_failed"] == 0
    assert level["duration_s"] == pytest.approx(2, abs=0.05)
    # Closed loop: latency and service time are the same measurement.
    assert level["service_ms"]["p50"] == level["latency_ms"]["p50"]
    assert stats.decode(level["histogram"]).get_total_count() == level["requests_ok"]
    assert level["client"]["cpu_percent"] > 0


def test_document_shape_and_run_wide_sections():
    with running_simulator(delay_ms=10, **FIXED) as sim:
        doc = run_sweep(target(sim, api_key="secret"), plan(levels=[1, 2], tokens=64, slo_p99_ms=1000),
                        run_info={"label": "smoke"})
    assert doc["schema"] == "embperf.run/1"
    assert doc["run"]["status"] == "succeeded" and doc["run"]["label"] == "smoke"
    assert "api_key" not in doc["target"] and "secret" not in str(doc)
    assert doc["probe"]["served_model"] == "sim-embed" and doc["probe"]["vector_length"] == 64
    assert doc["inputs"]["mode"] == "unique" and doc["inputs"]["cache_study"] is False
    # Calibrated against the server's own usage counts.
    assert doc["inputs"]["calibration"]["measured_tokens"] == pytest.approx(64, rel=0.1)
    assert [lv["concurrency"] for lv in doc["levels"]] == [1, 2]
    for level in doc["levels"]:
        assert level["tokens_per_text"]["mean"] == pytest.approx(64, rel=0.15)
        assert level["tokens_estimated"] is False
        assert level["tokens_per_s"] == pytest.approx(level["qps"] * level["tokens_per_text"]["mean"], rel=0.1)
        assert len(level["timeseries"]) == 2
        assert sum(s["completed"] for s in level["timeseries"]) == round(level["qps"] * level["duration_s"])
        assert level["schedule"] is None
    assert doc["summary"]["peak_level"] == 2 and doc["summary"]["slo_max_level"] == 2
    assert_portal_accepts(doc)


def assert_portal_accepts(doc):
    """The portal ingests exactly what the engine writes (its JSON Schema of embperf.run/1)."""
    schema = json.loads(SCHEMA_PATH.read_text())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in
              jsonschema.Draft202012Validator(schema).iter_errors(json.loads(json.dumps(doc)))]
    assert errors == []


def test_unique_inputs_are_unique_across_the_whole_run():
    with running_simulator(delay_ms=5, **FIXED) as sim:
        doc = run_sweep(target(sim), plan(levels=[2, 4], duration_s=1, batch=3))
        assert sim.stats.duplicate_texts == 0
        assert len(sim.texts_seen) == sim.stats.texts
    sent = sum(lv["requests_ok"] for lv in doc["levels"]) * 3
    assert sim.stats.texts >= sent > 100


def test_repeat_input_is_a_labelled_cache_study():
    with running_simulator(delay_ms=5, **FIXED) as sim:
        doc = run_sweep(target(sim), plan(input="repeat", duration_s=1))
        assert sim.stats.duplicate_texts > 50
    assert doc["inputs"]["cache_study"] is True


def test_open_loop_stall_shows_in_corrected_latency():
    # 200 arrivals/s; the server holds every response for 2 s in the middle of the window.
    with running_simulator(delay_ms=50, **FIXED) as sim:
        def stall(progress):
            second = progress.get("second")
            if progress["phase"] == "measure" and second and second["t"] == 0 and not stalled.is_set():
                stalled.set()
                sim.stall_now(2.0)

        stalled = threading.Event()
        doc = run_sweep(target(sim), plan(mode="open", arrival="constant", levels=[200], duration_s=3),
                        on_progress=stall)
    level = doc["levels"][0]
    assert stalled.is_set()
    assert level["rate"] == 200 and level["concurrency"] is None
    assert level["latency_ms"]["p99"] >= 2000
    assert level["latency_ms"]["max"] >= 2000
    # Without an in-flight cap requests start on time, so service time sees the stall as well.
    assert level["service_ms"]["p99"] >= 1500
    assert level["requests_started"] == pytest.approx(600, abs=3)
    assert level["requests_ok"] == level["requests_started"]
    # Starts held back by the stall would lag by up to its 2 s; a loaded machine's event loop lags by
    # milliseconds, so the bound is generous and does not depend on the load.
    assert level["schedule"]["lag_ms"]["p50"] < 200


def test_open_loop_with_cap_counts_from_the_intended_start():
    # Only 2 requests may be in flight, and 2 slots of 40 ms serve exactly the 50 arrivals/s: the
    # backlog built during the stall never drains. Service time (from the actual start) stays
    # short; latency from the intended start shows every request waiting behind the stall.
    with running_simulator(delay_ms=40, **FIXED) as sim:
        stalled = threading.Event()

        def stall(progress):
            second = progress.get("second")
            if progress["phase"] == "measure" and second and second["t"] == 0 and not stalled.is_set():
                stalled.set()
                sim.stall_now(2.0)

        doc = run_sweep(target(sim), plan(mode="open", arrival="constant", levels=[50], max_in_flight=2,
                                          duration_s=3), on_progress=stall)
    level = doc["levels"][0]
    assert level["latency_ms"]["p99"] >= 2000
    assert level["service_ms"]["p50"] < 100
    assert level["latency_ms"]["p50"] > level["service_ms"]["p50"] * 5
    assert level["schedule"]["late_requests"] > 50
    assert level["schedule"]["lag_ms"]["max"] >= 1500
    assert_portal_accepts(doc)


def test_poisson_arrivals_average_the_rate():
    with running_simulator(delay_ms=5, **FIXED) as sim:
        doc = run_sweep(target(sim), plan(mode="open", arrival="poisson", levels=[100], duration_s=2))
    level = doc["levels"][0]
    assert level["requests_started"] == pytest.approx(200, rel=0.25)
    assert level["qps"] == pytest.approx(100, rel=0.25)


def test_cancelled_sweep_keeps_its_finished_levels():
    token = CancelToken()
    delivered = []

    def on_level(level):
        delivered.append(level)
        if level["index"] == 0:
            threading.Timer(0.8, token.cancel).start()

    with running_simulator(delay_ms=10, **FIXED) as sim:
        doc = run_sweep(target(sim), plan(levels=[1, 2, 4], warmup_s=0.2, duration_s=2), cancel=token,
                        on_level=on_level)
    assert doc["run"]["status"] == "cancelled"
    assert [lv["index"] for lv in doc["levels"]] == [0, 1]
    assert doc["levels"][0]["status"] == "completed" and doc["levels"][0]["requests_ok"] > 50
    assert doc["levels"][1]["status"] == "cancelled" and doc["levels"][1]["duration_s"] < 1.5
    assert delivered == doc["levels"]
    # A level cut short by a person does not count in the summary.
    assert doc["summary"]["peak_level"] == 1


def test_abort_policy_stops_a_failing_level_and_the_sweep():
    with running_simulator(delay_ms=5, error_rate=0.9, **FIXED) as sim:
        sim.config.error_rate = 0.0  # the probe and calibration succeed ...
        levels = []
        progress = []

        def fail_on_measure(p):
            progress.append(p)
            if p["phase"] in ("warmup", "measure"):
                sim.config.error_rate = 0.9  # ... then the server breaks

        doc = run_sweep(target(sim), plan(levels=[2, 4], duration_s=4, abort_error_rate=0.5, abort_window_s=2),
                        on_level=levels.append, on_progress=fail_on_measure)
    assert len(doc["levels"]) == 1
    level = doc["levels"][0]
    assert level["status"] == "aborted" and "error rate above 50%" in level["abort_reason"]
    assert level["duration_s"] < 3.5
    assert level["errors"]["http_5xx"] > 0
    assert doc["run"]["status"] == "succeeded" and "stopped after level 0" in doc["run"]["status_reason"]


def test_progress_reports_every_second():
    seen = []
    with running_simulator(delay_ms=10, **FIXED) as sim:
        run_sweep(target(sim), plan(levels=[2], warmup_s=1, duration_s=2), on_progress=seen.append)
    phases = [p["phase"] for p in seen]
    assert phases[0] == "probe" and "warmup" in phases and "measure" in phases
    seconds = [p["second"] for p in seen if p["second"] and p["phase"] == "measure"]
    assert [s["t"] for s in seconds][:2] == [0, 1]
    assert all(s["completed"] > 50 and s["p99_ms"] >= 10 for s in seconds[:2])
    keys = {"level_index", "levels_total", "load", "phase", "level_elapsed_s", "level_total_s", "run_elapsed_s",
            "run_eta_s", "second", "completed", "failed", "telemetry"}
    assert all(set(p) == keys for p in seen)


def test_samples_sink_gets_every_window_request():
    batches = []
    with running_simulator(delay_ms=10, **FIXED) as sim:
        doc = run_sweep(target(sim), plan(keep_samples=True, duration_s=1),
                        samples_sink=lambda index, batch: batches.append((index, batch)))
    samples = [s for _, batch in batches for s in batch]
    level = doc["levels"][0]
    assert len(samples) == level["requests_ok"] + level["requests_failed"]
    intended, start, end, outcome, status, tokens, texts, nbytes = samples[0]
    assert 0 <= intended <= start < end and outcome == "ok" and status == 200 and texts == 1 and nbytes > 0


def test_two_processes_merge_exactly():
    with running_simulator(delay_ms=50, **FIXED) as sim:
        doc = run_sweep(target(sim), plan(levels=[6], processes=2, duration_s=2))
        assert sim.stats.duplicate_texts == 0
    level = doc["levels"][0]
    assert level["client"]["processes"] == 2
    # Little's law on the merged figures, as in test_closed_loop_gives_concurrency_over_service_time: up to 6
    # in flight = requests/s x mean latency, however long the busy machine makes the simulator's 50 ms requests.
    assert 6 * 0.5 <= level["qps"] * level["latency_ms"]["mean"] / 1000 <= 6 * 1.10
    assert level["latency_ms"]["p50"] >= 50
    assert stats.decode(level["histogram"]).get_total_count() == level["requests_ok"]


@pytest.mark.parametrize("flavor", ["tei", "ollama"])
def test_other_flavors(flavor):
    with running_simulator(delay_ms=5, **FIXED) as sim:
        doc = run_sweep(target(sim, flavor=flavor), plan(duration_s=1))
    level = doc["levels"][0]
    assert level["requests_ok"] > 20 and level["requests_failed"] == 0
    assert level["tokens_estimated"] is False


def test_probe_failure_is_a_sweep_error_with_a_hint():
    with running_simulator(api_key="right") as sim:
        with pytest.raises(SweepError, match="API key") as info:
            run_sweep(target(sim, api_key="wrong"), plan())
    assert info.value.document["levels"] == [] and info.value.document["run"]["status"] == "failed"


@pytest.mark.parametrize(
    ("change", "message"),
    [({"levels": []}, "levels"), ({"levels": [1.5]}, "whole number"), ({"mode": "burst"}, "mode"),
     ({"duration_s": 0}, "duration_s"), ({"input": "corpus"}, "corpus"), ({"batch": 0}, "batch")],
)
def test_bad_plans_are_config_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        run_sweep({"flavor": "openai", "base_urls": ["http://127.0.0.1:9/v1"], "model": "m"}, plan(**change))


class RecordingTelemetry:
    """Stands in for benchmarks.telemetry.Telemetry and records how the engine drives it."""

    def __init__(self):
        self.calls = []
        self.durations = []
        self.views = []
        self.notes = ["GPU telemetry unavailable: test"]

    def start(self):
        self.calls.append("start")

    def begin_level(self, index):
        self.calls.append(f"begin {index}")

    def end_level(self, *, requests_ok, prompt_tokens, duration_s, client_in_flight, latency_ms, idle_latency_ms):
        self.calls.append(f"end {requests_ok} {prompt_tokens > 0}")
        self.durations.append(duration_s)
        # What the client saw, for the server's gauges to be checked against; checked after the sweep against
        # the level's own figures (how many were in flight at each second depends on the machine's load).
        self.views.append({"client_in_flight": client_in_flight, "latency_ms": latency_ms,
                           "idle_latency_ms": idle_latency_ms})
        return {"energy": {"joules": 1.0, "joules_per_request": 1.0 / requests_ok, "joules_per_1k_tokens": 1.0},
                "telemetry_notes": ["no server metrics"]}

    def latest(self):
        return {"gpu": 0}

    def close(self):
        self.calls.append("close")


def test_telemetry_is_driven_around_each_window():
    telemetry = RecordingTelemetry()
    progress = []
    with running_simulator(delay_ms=10, **FIXED) as sim:
        doc = run_sweep(target(sim), plan(levels=[1, 2], duration_s=1), telemetry=telemetry,
                        on_progress=progress.append)
    ok = [lv["requests_ok"] for lv in doc["levels"]]
    assert telemetry.calls == ["start", "begin 0", f"end {ok[0]} True", "begin 1", f"end {ok[1]} True", "close"]
    # Telemetry is closed at the measured window, not after the drain.
    assert telemetry.durations == [lv["duration_s"] for lv in doc["levels"]]
    for level, view in zip(doc["levels"], telemetry.views, strict=True):
        seconds = [p["in_flight"] for p in level["timeseries"] if p.get("in_flight") is not None]
        assert view["client_in_flight"] == (sum(seconds) / len(seconds) if seconds else None)
        assert view["latency_ms"] == level["latency_ms"]["p50"] > 0
        assert view["idle_latency_ms"] > 0
    assert doc["levels"][0]["energy"]["joules"] == 1.0
    assert doc["levels"][1]["telemetry_notes"] == ["no server metrics"]
    assert doc["telemetry_notes"] == ["GPU telemetry unavailable: test"]
    assert progress[-1]["telemetry"] == {"gpu": 0}
