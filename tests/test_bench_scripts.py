"""The `make bench` machinery: the section driver, the fast target, wrk report parsing."""
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load("bench")
bench_engine = _load("bench_engine")

WRK_REPORT = """Running 5s test @ http://127.0.0.1:40001/v1/embeddings
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   700.95us  318.77us   5.95ms   89.59%
    Req/Sec    93.82k    21.47k  119.31k    82.00%
  Latency Distribution
     50%  650.00us
     75%  800.00us
     90%    1.10ms
     99%    2.25ms
  465485 requests in 5.00s, 5.62GB read
  Non-2xx or 3xx responses: 3
Requests/sec:  93083.19
Transfer/sec:      1.12GB
"""


def test_sections_are_found_by_name():
    assert "engine" in bench.sections()


def test_unknown_section_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        bench.main(["no-such-section"])
    assert exited.value.code == 2
    assert "unknown section(s) no-such-section" in capsys.readouterr().err


def test_parse_wrk_reads_rate_percentiles_and_failures():
    result = bench_engine.parse_wrk(WRK_REPORT)
    assert result["qps"] == pytest.approx(93083.19)
    assert result["p50_ms"] == pytest.approx(0.65)
    assert result["p99_ms"] == pytest.approx(2.25)
    assert result["non_2xx"] == 3


def test_parse_wrk_without_a_rate_is_an_error():
    with pytest.raises(bench_engine.BenchError, match="no Requests/sec"):
        bench_engine.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


@pytest.fixture
def fast_target():
    command = [sys.executable, str(SCRIPTS / "fast_target.py"), "--port", "0", "--delay-ms", "30"]
    with bench_engine.serving(command, "fast target") as root:
        yield root


def test_fast_target_answers_one_vector_per_input(fast_target):
    body = {"model": "fast-target", "input": ["a b c d", "e", "f"], "dimensions": 16}
    started = time.monotonic()
    response = httpx.post(f"{fast_target}/v1/embeddings", json=body, timeout=10)
    assert time.monotonic() - started >= 0.03
    assert response.status_code == 200
    data = response.json()
    assert [len(item["embedding"]) for item in data["data"]] == [16, 16, 16]
    assert [item["index"] for item in data["data"]] == [0, 1, 2]
    assert data["usage"]["prompt_tokens"] == len(response.request.content) // 4
    assert httpx.get(f"{fast_target}/v1/models", timeout=10).json()["data"][0]["id"] == "fast-target"


def test_fast_target_rejects_a_body_that_is_not_json(fast_target):
    response = httpx.post(f"{fast_target}/v1/embeddings", content=b"nope", timeout=10)
    assert response.status_code == 400


def test_serving_reports_a_server_that_does_not_start():
    command = [sys.executable, "-c", "print('no url here')"]
    with pytest.raises(bench_engine.BenchError, match="did not start: no url here"):
        with bench_engine.serving(command, "a broken server"):
            pass


def test_bench_section_scripts_run_as_programs():
    completed = subprocess.run([sys.executable, str(SCRIPTS / "bench.py"), "--list"], capture_output=True,
                               text=True, timeout=30)
    assert completed.returncode == 0
    assert "engine" in completed.stdout.split()
