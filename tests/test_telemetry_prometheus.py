"""Remote sampling: a real local HTTP endpoint serves DCGM exporter, vLLM, SGLang and TEI metric text
that changes over time; Telemetry scrapes it during two levels and the per-level figures are checked."""
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks.telemetry import Telemetry
from benchmarks.telemetry.prometheus import dcgm_value, parse_metrics
from benchmarks.telemetry.summary import counter_at, counter_delta

INT64_BLANK = 9223372036854775794  # what DCGM sends for "not supported" in an int64 field
FP64_BLANK = 140737488355328.0

# Per phase: what each exporter reports. Gauges step through a pattern, one step per scrape of that
# path; counters grow with wall time at the phase's rate.
PHASES = {
    "low": {
        "util": [18, 22], "sm_active": [0.2, 0.3], "fb_used": [1000, 1100], "power": 100.0, "clock": [1400, 1500],
        "temp": [40, 42], "throttle": 0x1,
        "waiting": [0, 1], "running": [1, 2], "tokens_per_s": 1000.0,
    },
    "high": {
        "util": [88, 92], "sm_active": [0.7, 0.9], "fb_used": [5000, 5200], "power": 400.0, "clock": [1900, 1980],
        "temp": [60, 65], "throttle": 0x4,
        "waiting": [2, 4, 6, 4], "running": [8, 8], "tokens_per_s": 5000.0,
    },
}


class MetricsWorld:
    """The state behind the endpoint: the phase, and counters integrated over wall time."""

    def __init__(self):
        self.lock = threading.Lock()
        self.phase = "low"
        self.since = time.monotonic()
        self.energy_mj = 5.0e9
        self.tokens = 1.0e6
        self.scrapes: dict[str, int] = {}

    def set_phase(self, phase: str) -> None:
        with self.lock:
            self._advance()
            self.phase = phase

    def _advance(self) -> None:
        now = time.monotonic()
        spec = PHASES[self.phase]
        self.energy_mj += spec["power"] * 1000.0 * (now - self.since)
        self.tokens += spec["tokens_per_s"] * (now - self.since)
        self.since = now

    def text(self, path: str) -> str:
        with self.lock:
            self._advance()
            n = self.scrapes.get(path, 0)
            self.scrapes[path] = n + 1
            spec = PHASES[self.phase]

            def step(key):
                return spec[key][n % len(spec[key])]

            if path == "/dcgm":
                return dcgm_text(spec, step, self.energy_mj)
            if path == "/vllm":
                return vllm_text(step, self.tokens)
            if path == "/sglang":
                return sglang_text(step, self.tokens)
            if path == "/tei":
                return tei_text(step, self.tokens, n)
        raise KeyError(path)


def dcgm_text(spec, step, energy_mj) -> str:
    lines = []
    for gpu in (0, 1):
        labels = f'gpu="{gpu}",UUID="GPU-{gpu}abc",device="nvidia{gpu}",modelName="NVIDIA H100 80GB HBM3",Hostname="h"'
        sm_active = step("sm_active") if gpu == 0 else FP64_BLANK  # GPU 1: profiling metrics not available
        lines += [
            f"DCGM_FI_DEV_GPU_UTIL{{{labels}}} {step('util')}",
            f"DCGM_FI_PROF_SM_ACTIVE{{{labels}}} {sm_active}",
            f"DCGM_FI_DEV_FB_USED{{{labels}}} {step('fb_used')}",
            f"DCGM_FI_DEV_FB_FREE{{{labels}}} {81559 - step('fb_used')}",
            f"DCGM_FI_DEV_POWER_USAGE{{{labels}}} {spec['power']}",
            f"DCGM_FI_DEV_SM_CLOCK{{{labels}}} {step('clock')}",
            f"DCGM_FI_DEV_GPU_TEMP{{{labels}}} {step('temp')}",
            f"DCGM_FI_DEV_CLOCK_THROTTLE_REASONS{{{labels}}} {spec['throttle']}",
            f"DCGM_FI_DEV_MEM_COPY_UTIL{{{labels}}} {INT64_BLANK}",
        ]
        lines.append(f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{labels}}} {int(energy_mj)}")
    # the exporter groups each field under one HELP/TYPE; order by field as it does
    lines.sort(key=lambda line: line.split("{")[0])
    out, seen = [], set()
    for line in lines:
        name = line.split("{")[0]
        if name not in seen:
            seen.add(name)
            kind = "counter" if name == "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" else "gauge"
            out += [f"# HELP {name} {name}.", f"# TYPE {name} {kind}"]
        out.append(line)
    return "\n".join(out) + "\n"


def vllm_text(step, tokens) -> str:
    label = 'model_name="Qwen/Qwen3-Embedding-0.6B",engine="0"'
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{{{label}}} {float(step('running'))}\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f"vllm:num_requests_waiting{{{label}}} {float(step('waiting'))}\n"
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
        "# TYPE vllm:prompt_tokens_total counter\n"
        f"vllm:prompt_tokens_total{{{label}}} {float(int(tokens))}\n"
    )


def sglang_text(step, tokens) -> str:
    # SGLang with data parallelism: one series per rank; the reader sums them
    out = []
    for rank in (0, 1):
        label = f'model_name="bge",dp_rank="{rank}"'
        out += [
            f"sglang:num_running_reqs{{{label}}} {step('running') / 2}",
            f"sglang:num_queue_reqs{{{label}}} {step('waiting') / 2}",
            f"sglang:prompt_tokens_total{{{label}}} {int(tokens) / 2}",
        ]
    return "# TYPE sglang:num_running_reqs gauge\n# TYPE sglang:num_queue_reqs gauge\n" + "\n".join(out) + "\n"


def tei_text(step, tokens, n) -> str:
    batches = 100 + n
    return (
        "# TYPE te_queue_size gauge\n"
        f"te_queue_size {step('waiting')}\n"
        "# TYPE te_batch_next_size histogram\n"
        f'te_batch_next_size_bucket{{le="1"}} 0\n'
        f'te_batch_next_size_bucket{{le="+Inf"}} {batches}\n'
        f"te_batch_next_size_sum {batches * 4}\n"
        f"te_batch_next_size_count {batches}\n"
        "# TYPE te_request_input_length histogram\n"
        f'te_request_input_length_bucket{{le="+Inf"}} {int(tokens) // 512}\n'
        f"te_request_input_length_sum {int(tokens)}\n"
        f"te_request_input_length_count {int(tokens) // 512}\n"
        "# TYPE te_request_count counter\n"
        f'te_request_count{{method="batch"}} {int(tokens) // 512}\n'
    )


@pytest.fixture
def endpoint():
    world = MetricsWorld()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # http.server's naming
            try:
                body, status = world.text(self.path).encode(), 200
            except KeyError:
                body, status = b"no such metrics\n", 404
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield world, base
    server.shutdown()
    server.server_close()


LEVEL_S = 1.6


def run_two_levels(world, telemetries):
    """Level 0 in the low phase, level 1 in the high phase; phase switches happen between windows."""
    for t in telemetries:
        t.start()
    time.sleep(0.5)  # readings before the first window: the counters need a neighbour on each side
    results = []
    for index, phase in enumerate(("low", "high")):
        world.set_phase(phase)
        time.sleep(0.3)  # a scrape sent before the switch is answered before the window opens
        for t in telemetries:
            t.begin_level(index)
        started = time.monotonic()
        time.sleep(LEVEL_S)
        duration = time.monotonic() - started
        results.append([t.end_level(requests_ok=200, prompt_tokens=int(
            PHASES[phase]["tokens_per_s"] * duration)) for t in telemetries])
        time.sleep(0.3)
    for t in telemetries:
        t.close()
    return results


def test_levels_from_dcgm_and_servers(endpoint):
    world, base = endpoint
    dcgm_vllm = Telemetry(metrics_urls=[f"{base}/dcgm", f"{base}/vllm"], scrape_interval_s=0.2)
    sglang = Telemetry(metrics_urls=[f"{base}/sglang"], scrape_interval_s=0.2)
    tei = Telemetry(metrics_urls=[f"{base}/tei"], scrape_interval_s=0.2)
    levels = run_two_levels(world, [dcgm_vllm, sglang, tei])

    for level_index, phase in enumerate(("low", "high")):
        spec = PHASES[phase]
        doc = levels[level_index][0]
        gpu = doc["gpu"]
        assert gpu["source"] == "prometheus"
        assert [g["index"] for g in gpu["gpus"]] == [0, 1]
        g0, g1 = gpu["gpus"]
        assert g0["name"] == "NVIDIA H100 80GB HBM3"
        assert g0["samples"] >= 4
        assert min(spec["util"]) <= g0["utilization_mean"] <= max(spec["util"])
        assert g0["utilization_max"] in spec["util"]
        assert min(spec["sm_active"]) * 100 <= g0["sm_active_mean"] <= max(spec["sm_active"]) * 100
        assert g1["sm_active_mean"] is None  # DCGM's float blank is "not available", not 1.4e14 %
        assert g0["memory_utilization_mean"] is None  # int64 blank near 2^63
        assert g0["memory_used_peak_mib"] in spec["fb_used"]
        assert g0["memory_total_mib"] == 81559
        assert g0["power_mean_w"] == spec["power"]
        assert min(spec["clock"]) <= g0["sm_clock_mean_mhz"] <= max(spec["clock"])
        assert g0["temperature_max_c"] in spec["temp"]
        assert g0["throttle_reasons"] == (["gpu_idle"] if phase == "low" else ["sw_power_cap"])
        # energy from the counter: power x window length, for each of the two GPUs
        expected_j = spec["power"] * LEVEL_S
        assert g0["energy_j"] == pytest.approx(expected_j, rel=0.15)
        energy = doc["energy"]
        assert energy["method"] == "counter"
        assert energy["gpus"] == 2
        assert energy["joules"] == pytest.approx(2 * expected_j, rel=0.15)
        assert energy["joules_per_request"] == pytest.approx(energy["joules"] / 200, rel=1e-3)
        assert energy["joules_per_1k_tokens"] > 0
        ts = gpu["timeseries"]
        assert {p["gpu"] for p in ts} == {0, 1}
        assert all(0 <= p["t"] <= LEVEL_S + 0.2 for p in ts)
        assert {p["util"] for p in ts} <= set(spec["util"])
        assert any("SM activity unavailable" in n and "GPU 1" in n for n in doc["telemetry_notes"])

        for server_doc, engine in ((doc, "vllm"), (levels[level_index][1], "sglang")):
            server = server_doc["server"]
            assert server["engines"] == [engine]
            assert min(spec["waiting"]) <= server["queue_depth"]["mean"] <= max(spec["waiting"])
            assert server["queue_depth"]["max"] <= max(spec["waiting"])
            assert min(spec["running"]) <= server["running"]["mean"] <= max(spec["running"])
            assert server["running"]["max"] in spec["running"]
            # the server's counter grew by the phase's token rate over the window, as the client counted
            assert server["prompt_tokens_delta"] == pytest.approx(spec["tokens_per_s"] * LEVEL_S, rel=0.15)
            assert server["prompt_tokens_ratio"] == pytest.approx(1.0, abs=0.15)
            assert server["samples"] == len(server["timeseries"]) >= 4
        if phase == "high":
            assert levels[1][0]["server"]["queue_depth"]["max"] == 6  # a full cycle 2,4,6,4 fits in the window

        tei_doc = levels[level_index][2]
        server = tei_doc["server"]
        assert server["engines"] == ["tei"]
        assert server["running"] == {"mean": None, "max": None}  # TEI has no running gauge
        assert min(spec["waiting"]) <= server["queue_depth"]["mean"] <= max(spec["waiting"])
        assert server["batch_size_mean"] == pytest.approx(4.0)
        assert server["prompt_tokens_delta"] == pytest.approx(spec["tokens_per_s"] * LEVEL_S, rel=0.15)
        assert "gpu" not in tei_doc and "energy" not in tei_doc
    # the high level used more GPU than the low one, as the endpoint said
    assert levels[1][0]["gpu"]["gpus"][0]["utilization_mean"] > levels[0][0]["gpu"]["gpus"][0]["utilization_mean"]
    assert "DCGM_FI_DEV_MEM_COPY_UTIL is not available from" in " ".join(dcgm_vllm.notes)


def test_unreachable_and_wrong_urls_become_notes(endpoint):
    world, base = endpoint
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    telemetry = Telemetry(
        metrics_urls=[f"http://127.0.0.1:{closed_port}/metrics", f"{base}/nothing-here", "ftp://x/metrics"],
        scrape_interval_s=0.2,
    )
    telemetry.start()
    telemetry.begin_level(0)
    time.sleep(0.7)
    doc = telemetry.end_level(requests_ok=10, prompt_tokens=100)
    telemetry.close()
    assert "gpu" not in doc and "server" not in doc and "energy" not in doc
    notes = " | ".join(doc["telemetry_notes"])
    assert f"127.0.0.1:{closed_port}/metrics:" in notes and "cannot connect" in notes
    assert "/nothing-here:" in notes and "HTTP 404" in notes
    assert "metrics URL 'ftp://x/metrics' skipped: it must start with http:// or https://" in telemetry.notes
    assert telemetry.latest() is None


def test_dcgm_blank_values():
    assert dcgm_value(INT64_BLANK) is None
    assert dcgm_value(FP64_BLANK) is None
    assert dcgm_value(0x7FFFFFF0) is None  # int32 blank
    assert dcgm_value(float("nan")) is None
    assert dcgm_value(61.5) == 61.5
    assert dcgm_value(3.2e13) == 3.2e13  # an energy counter after a year at 1 kW is a real value


def test_parse_vllm_counter_and_data_parallel_sum():
    text = (
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{engine="0"} 3\nvllm:num_requests_waiting{engine="1"} 4\n'
        "# TYPE vllm:prompt_tokens_total counter\n"
        'vllm:prompt_tokens_total{engine="0"} 100\nvllm:prompt_tokens_total{engine="1"} 50\n'
    )
    parsed = parse_metrics(text, source="u", t=1.0)
    assert parsed.gpus == []
    assert parsed.server.queue_depth == 7 and parsed.server.prompt_tokens == 150 and parsed.server.running is None
    with pytest.raises(ValueError):
        parse_metrics("this is { not prometheus", source="u", t=1.0)


def test_counter_interpolation_at_window_edges():
    points = [(0.0, 0.0), (1.0, 10.0), (2.0, 20.0), (3.0, 30.0)]
    assert counter_at(points, 1.5, max_extrapolation_s=1) == 15.0
    assert counter_at(points, 3.5, max_extrapolation_s=1) == 35.0  # extrapolated from the last two
    assert counter_at(points, 5.0, max_extrapolation_s=1) is None  # too far to guess
    assert counter_delta(points, 0.25, 2.75) == 25.0
    assert counter_delta([(0.0, 50.0), (1.0, 5.0), (2.0, 6.0)], 0.0, 2.0) is None  # counter reset
    assert math.isclose(counter_delta([(0.0, 0.0), (2.0, 1.0)], 0.5, 1.5), 0.5)


def test_window_closes_at_the_measured_duration(endpoint):
    """A level that waits for in-flight requests after its window passes duration_s: readings taken
    during that drain do not count."""
    world, base = endpoint
    telemetry = Telemetry(metrics_urls=[f"{base}/dcgm"], scrape_interval_s=0.2)
    telemetry.start()
    time.sleep(0.5)
    telemetry.begin_level(0)
    time.sleep(1.2)  # the window: low phase
    world.set_phase("high")  # the drain after it
    time.sleep(0.8)
    doc = telemetry.end_level(requests_ok=10, prompt_tokens=1000, duration_s=1.0)
    telemetry.close()
    g0 = doc["gpu"]["gpus"][0]
    assert g0["utilization_max"] in PHASES["low"]["util"]
    assert all(p["t"] <= 1.0 for p in doc["gpu"]["timeseries"])
    assert g0["energy_j"] == pytest.approx(PHASES["low"]["power"] * 1.0, rel=0.15)


def test_scrapes_stay_out_of_the_log(endpoint, caplog):
    _world, base = endpoint
    telemetry = Telemetry(metrics_urls=[f"{base}/vllm"], scrape_interval_s=0.1)
    with caplog.at_level("INFO"):
        telemetry.start()
        time.sleep(0.4)
        telemetry.close()
    assert telemetry.latest()["server"]["running"] is not None
    assert not [r for r in caplog.records if r.name.startswith("httpx")]
