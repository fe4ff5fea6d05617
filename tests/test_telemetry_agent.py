"""gpu-agent -> scraper round trip. No GPU is here, so the agent's NVML reader is replaced by a recorded
sequence of readings (idle, then a matmul load on an H100); everything else is real: the agent's HTTP
server and DCGM-named text, the Prometheus parser, the sampling thread and the per-level figures."""
import threading
import time

import httpx
import pytest

from benchmarks.telemetry import Telemetry
from benchmarks.telemetry.agent import GpuAgent, main, render_metrics
from benchmarks.telemetry.prometheus import parse_metrics
from benchmarks.telemetry.readings import GpuReading
from tests.prerequisites import needs_no_gpu

# Recorded once per second from GPU 0 of an H100 80GB host; GPU 1 stayed idle throughout.
# (util %, SM active %, memory used MiB, power W, SM clock MHz, temperature C, clock event bits)
RECORDING = {
    "idle": [
        (0, 0.0, 531, 71.2, 345, 31, 0x1),
        (0, 0.0, 531, 70.8, 345, 31, 0x1),
        (0, 0.1, 531, 71.5, 345, 31, 0x1),
    ],
    "load": [
        (100, 82.4, 17412, 598.3, 1980, 55, 0x0),
        (99, 79.1, 17412, 611.0, 1980, 56, 0x4),
        (100, 84.7, 17418, 604.6, 1965, 57, 0x4),
        (97, 78.3, 17418, 587.9, 1980, 57, 0x0),
    ],
}
IDLE_GPU1 = (0, 0.0, 0, 68.0, 345, 29, 0x1)
TOTAL_MIB = 81559.0


class RecordedReader:
    """Plays the recording back: each read() returns the next recorded reading of the current phase,
    with the energy counter integrated from the played-back power over real time, as NVML's would be."""

    def __init__(self):
        self.lock = threading.Lock()
        self.phase = "idle"
        self.position = 0
        self.energy_mj = {0: 9.1e9, 1: 8.7e9}
        self.last_t = time.monotonic()
        self.last_power = {0: RECORDING["idle"][0][3], 1: IDLE_GPU1[3]}
        self.notes = []

    def play(self, phase):
        with self.lock:
            self.phase, self.position = phase, 0

    def read(self):
        with self.lock:
            now = time.monotonic()
            rows = {0: RECORDING[self.phase][self.position % len(RECORDING[self.phase])], 1: IDLE_GPU1}
            self.position += 1
            out = []
            for index, (util, sm, mem, power, clock, temp, bits) in rows.items():
                self.energy_mj[index] += self.last_power[index] * 1000.0 * (now - self.last_t)
                self.last_power[index] = power
                out.append(GpuReading(
                    t=now, index=index, name="NVIDIA H100 80GB HBM3", uuid=f"GPU-{index}f3a",
                    util=util, mem_util=util * 0.4, sm_active=sm, mem_used_mib=mem, mem_reserved_mib=512.0,
                    mem_total_mib=TOTAL_MIB, power_w=power, energy_mj=self.energy_mj[index],
                    sm_clock_mhz=clock, temperature_c=temp, throttle_mask=bits,
                ))
            self.last_t = now
            return out


@pytest.fixture
def agent():
    reader = RecordedReader()
    agent = GpuAgent(reader, host="127.0.0.1", port=0, hostname="gpu-host-1").start()
    yield agent, reader
    agent.stop()


def test_agent_serves_dcgm_names(agent):
    server, _reader = agent
    response = httpx.get(server.url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_SM_ACTIVE", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE",
                 "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"):
        assert f"# TYPE {name} " in text
    assert 'DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-1f3a",device="nvidia1",modelName="NVIDIA H100 80GB HBM3",' \
           'Hostname="gpu-host-1"} 0' in text
    assert httpx.get(server.url.replace("/metrics", "/other")).status_code == 404


def test_render_then_parse_keeps_every_figure():
    reading = GpuReading(t=0, index=3, name='A "quoted" name', uuid="GPU-x", util=42.0, mem_util=12.0,
                         sm_active=61.5, mem_used_mib=2048.0, mem_reserved_mib=256.0, mem_total_mib=8192.0,
                         power_w=123.4, energy_mj=5.5e9, sm_clock_mhz=1710.0, temperature_c=44.0, throttle_mask=0x24)
    parsed = parse_metrics(render_metrics([reading], hostname="h"), source="u", t=7.0)
    [back] = parsed.gpus
    assert back.index == 3 and back.name == 'A "quoted" name' and back.source == "u" and back.t == 7.0
    for field in ("util", "mem_util", "sm_active", "mem_used_mib", "mem_reserved_mib", "mem_total_mib", "power_w",
                  "energy_mj", "sm_clock_mhz", "temperature_c", "throttle_mask"):
        assert getattr(back, field) == pytest.approx(getattr(reading, field)), field
    # a figure the GPU does not offer is left out, and reads back as None
    reading.sm_active = None
    assert parse_metrics(render_metrics([reading], hostname="h"), source="u", t=0).gpus[0].sm_active is None


def test_round_trip_levels(agent):
    server, reader = agent
    telemetry = Telemetry(metrics_urls=[server.url], scrape_interval_s=0.2)
    telemetry.start()
    time.sleep(0.5)
    docs = {}
    for index, phase in enumerate(("idle", "load")):
        reader.play(phase)
        time.sleep(0.3)
        telemetry.begin_level(index)
        started = time.monotonic()
        time.sleep(1.6)
        duration = time.monotonic() - started
        docs[phase] = (telemetry.end_level(requests_ok=400, prompt_tokens=400 * 512), duration)
        time.sleep(0.3)
    latest = telemetry.latest()
    telemetry.close()

    for phase, (doc, duration) in docs.items():
        rows = RECORDING[phase]
        gpu = doc["gpu"]
        assert gpu["source"] == "prometheus"
        g0, g1 = gpu["gpus"]
        assert (g0["index"], g1["index"]) == (0, 1)
        assert g0["source"] == server.url
        assert g0["samples"] >= 4
        assert min(r[0] for r in rows) <= g0["utilization_mean"] <= max(r[0] for r in rows)
        assert g0["utilization_max"] in {r[0] for r in rows}
        assert min(r[1] for r in rows) <= g0["sm_active_mean"] <= max(r[1] for r in rows)
        assert g0["memory_used_peak_mib"] in {r[2] for r in rows}
        assert g0["memory_total_mib"] == TOTAL_MIB
        assert min(r[3] for r in rows) <= g0["power_mean_w"] <= max(r[3] for r in rows)
        assert min(r[4] for r in rows) <= g0["sm_clock_mean_mhz"] <= max(r[4] for r in rows)
        assert g0["temperature_max_c"] in {r[5] for r in rows}
        assert g1["utilization_mean"] == 0 and g1["power_mean_w"] == IDLE_GPU1[3]
        # energy: the counter the agent served grew with the power it served
        assert g0["energy_j"] == pytest.approx(g0["power_mean_w"] * duration, rel=0.2)
        assert doc["energy"]["joules"] == pytest.approx(g0["energy_j"] + g1["energy_j"], abs=0.2)
        assert doc["energy"]["joules_per_1k_tokens"] == pytest.approx(
            doc["energy"]["joules"] * 1000 / (400 * 512), rel=1e-3)
        assert "server" not in doc
    idle, load = docs["idle"][0]["gpu"]["gpus"][0], docs["load"][0]["gpu"]["gpus"][0]
    assert idle["throttle_reasons"] == ["gpu_idle"]
    assert load["throttle_reasons"] == ["sw_power_cap"]
    assert load["utilization_mean"] >= 97 and idle["utilization_mean"] == 0
    assert load["memory_used_peak_mib"] > idle["memory_used_peak_mib"]
    assert docs["load"][0]["energy"]["joules_per_request"] > docs["idle"][0]["energy"]["joules_per_request"]
    assert latest["gpus"][0]["index"] == 0 and latest["gpus"][0]["util"] in {r[0] for r in RECORDING["load"]}


@needs_no_gpu
def test_agent_cli_without_gpu_says_why(capsys):
    # on a host without NVML the agent refuses to start, with the reason; with a GPU it would serve
    assert main(["--port", "0"]) == 2
    assert "GPU telemetry unavailable: NVML library not found" in capsys.readouterr().err
