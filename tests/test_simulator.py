"""The simulator: API shapes per flavor, usage, determinism, faults, batching, metrics."""
import asyncio
import base64
import math
import re
import signal
import subprocess
import sys
import threading
import time

import aiohttp
import httpx
import numpy as np
import pytest

from benchmarks.simulator import (
    SimulatorConfig,
    build_parser,
    config_from_args,
    count_tokens,
    main,
    running_simulator,
    text_vector,
)


@pytest.fixture
def sim():
    with running_simulator(native_dimensions=64, batch_ms=1, token_us=0) as handle:
        yield handle


def _post(url, body, **kwargs):
    return httpx.post(url, json=body, timeout=10, **kwargs)


def test_count_tokens_is_word_piece_like():
    assert count_tokens("hello") == 2          # 5 characters: two 4-character pieces
    assert count_tokens("a b c") == 3
    assert count_tokens("it's done.") == 5     # it ' s done .
    assert count_tokens("   ") == 0


def test_openai_shape_usage_and_unit_vectors(sim):
    texts = ["the quick brown fox", "jumps over", "the lazy dog!"]
    response = _post(f"{sim.base_url}/embeddings", {"model": "sim-embed", "input": texts, "dimensions": 16})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert body["model"] == "sim-embed"
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert all(len(item["embedding"]) == 16 for item in body["data"])
    for item in body["data"]:
        assert math.isclose(math.fsum(x * x for x in item["embedding"]), 1.0, rel_tol=1e-4)
    expected = sum(count_tokens(text) for text in texts)
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
    assert response.headers["x-compute-tokens"] == str(expected)


def test_single_string_and_native_dimensions(sim):
    body = _post(f"{sim.base_url}/embeddings", {"model": "sim-embed", "input": "one text"}).json()
    assert len(body["data"]) == 1
    assert len(body["data"][0]["embedding"]) == 64


def test_same_text_same_vector_other_text_other_vector(sim):
    url = f"{sim.base_url}/embeddings"
    first = _post(url, {"input": ["alpha", "beta"]}).json()["data"]
    again = _post(url, {"input": ["alpha"]}).json()["data"]
    assert first[0]["embedding"] == again[0]["embedding"]
    assert first[0]["embedding"] != first[1]["embedding"]


def test_infinity_style_path_without_v1(sim):
    response = _post(f"{sim.url}/embeddings", {"model": "sim-embed", "input": ["x"]})
    assert response.status_code == 200
    assert len(response.json()["data"][0]["embedding"]) == 64


def test_base64_is_little_endian_float32_of_the_same_vector(sim):
    url = f"{sim.base_url}/embeddings"
    floats = _post(url, {"input": "gamma", "dimensions": 32}).json()["data"][0]["embedding"]
    encoded = _post(url, {"input": "gamma", "dimensions": 32, "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(encoded["data"][0]["embedding"]), dtype="<f4")
    assert decoded.shape == (32,)
    np.testing.assert_allclose(decoded, np.array(floats, dtype=np.float32), rtol=1e-6)
    np.testing.assert_allclose(decoded, text_vector("gamma", 32, 64))


def test_tei_embed_returns_list_of_vectors(sim):
    single = _post(f"{sim.url}/embed", {"inputs": "delta"})
    assert single.status_code == 200
    assert len(single.json()) == 1 and len(single.json()[0]) == 64
    several = _post(f"{sim.url}/embed", {"inputs": ["a", "b"], "dimensions": 8}).json()
    assert [len(vector) for vector in several] == [8, 8]


def test_tei_validation_error_is_422(sim):
    response = _post(f"{sim.url}/embed", {"input": "wrong field name"})
    assert response.status_code == 422
    assert response.json()["error_type"] == "Validation"
    assert "inputs" in response.json()["error"]


def test_ollama_embed_shape_and_token_count(sim):
    response = _post(f"{sim.url}/api/embed", {"model": "sim-embed", "input": ["epsilon zeta", "eta"]})
    assert response.status_code == 200
    body = response.json()
    assert len(body["embeddings"]) == 2 and len(body["embeddings"][0]) == 64
    assert body["prompt_eval_count"] == count_tokens("epsilon zeta") + count_tokens("eta")
    assert body["model"] == "sim-embed"


def test_ollama_unknown_model_is_404(sim):
    response = _post(f"{sim.url}/api/embed", {"model": "other", "input": "x"})
    assert response.status_code == 404
    assert "not found" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": "sim-embed"}, "Missing required field 'input'"),
        ({"input": 5}, "must be a string or a non-empty list of strings"),
        ({"input": []}, "must be a string or a non-empty list of strings"),
        ({"input": [""]}, "empty strings"),
        ({"input": "x", "dimensions": 65}, "between 1 and 64"),
        ({"input": "x", "dimensions": "8"}, "must be an integer"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_openai_bad_input_is_400_with_openai_error_body(sim, body, fragment):
    response = _post(f"{sim.base_url}/embeddings", body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"


def test_invalid_json_is_400(sim):
    response = httpx.post(f"{sim.base_url}/embeddings", content=b"{not json", timeout=10)
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def test_unknown_model_is_404(sim):
    response = _post(f"{sim.base_url}/embeddings", {"model": "text-embedding-3-small", "input": "x"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_too_long_input_is_rejected():
    with running_simulator(max_input_tokens=4, batch_ms=0, token_us=0) as sim:
        response = _post(f"{sim.base_url}/embeddings", {"input": "one two three four five"})
    assert response.status_code == 400
    assert "maximum context length of 4 tokens" in response.json()["error"]["message"]


def test_api_key_is_required_when_configured():
    with running_simulator(api_key="s3cret", batch_ms=0, token_us=0) as sim:
        url = f"{sim.base_url}/embeddings"
        missing = _post(url, {"input": "x"})
        wrong = _post(url, {"input": "x"}, headers={"Authorization": "Bearer nope"})
        right = _post(url, {"input": "x"}, headers={"Authorization": "Bearer s3cret"})
        models = httpx.get(f"{sim.base_url}/models", timeout=10)
        health = httpx.get(f"{sim.url}/health", timeout=10)
    assert missing.status_code == 401 and wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert right.status_code == 200
    assert models.status_code == 401
    assert health.status_code == 200


def test_models_and_health(sim):
    models = httpx.get(f"{sim.base_url}/models", timeout=10).json()
    assert [model["id"] for model in models["data"]] == ["sim-embed"]
    assert httpx.get(f"{sim.url}/health", timeout=10).status_code == 200


def test_error_rate_gives_500():
    with running_simulator(error_rate=1.0, batch_ms=0) as sim:
        response = _post(f"{sim.base_url}/embeddings", {"input": "x"})
        assert sim.stats.status_counts == {500: 1}
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"


def test_rate_limit_rate_gives_429_with_retry_after():
    with running_simulator(rate_limit_rate=1.0, batch_ms=0) as sim:
        response = _post(f"{sim.url}/embed", {"inputs": "x"})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"


def test_fault_rates_are_proportions():
    with running_simulator(error_rate=0.3, batch_ms=0, token_us=0, seed=7) as sim:
        with httpx.Client(timeout=10) as client:
            statuses = [client.post(f"{sim.base_url}/embeddings", json={"input": f"t{i}"}).status_code
                        for i in range(200)]
    assert 30 <= statuses.count(500) <= 90
    assert statuses.count(200) + statuses.count(500) == 200


def test_reset_rate_closes_the_connection_without_a_response():
    with running_simulator(reset_rate=1.0, batch_ms=0) as sim:
        with pytest.raises(httpx.TransportError):
            _post(f"{sim.base_url}/embeddings", {"input": "x"})
        assert sim.stats.resets == 1
        assert sim.stats.requests_ok == 0


def test_wrong_dimensions_rate_sends_short_vectors():
    with running_simulator(wrong_dimensions_rate=1.0, batch_ms=0, native_dimensions=64) as sim:
        body = _post(f"{sim.base_url}/embeddings", {"input": ["x", "y"], "dimensions": 16}).json()
    assert [len(item["embedding"]) for item in body["data"]] == [15, 15]


def test_nan_rate_sends_null_in_json_and_nan_in_base64():
    with running_simulator(nan_rate=1.0, batch_ms=0, native_dimensions=64) as sim:
        as_json = _post(f"{sim.base_url}/embeddings", {"input": "x"}).json()
        as_base64 = _post(f"{sim.base_url}/embeddings", {"input": "x", "encoding_format": "base64"}).json()
    assert None in as_json["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(as_base64["data"][0]["embedding"]), dtype="<f4")
    assert np.isnan(decoded).sum() == 1


def test_delay_is_added_to_every_request():
    with running_simulator(delay_ms=200, batch_ms=0, token_us=0) as sim:
        started = time.monotonic()
        _post(f"{sim.base_url}/embeddings", {"input": "x"})
        elapsed = time.monotonic() - started
    assert elapsed >= 0.2


def test_stall_now_holds_responses():
    with running_simulator(batch_ms=0, token_us=0) as sim:
        sim.stall_now(0.5)
        started = time.monotonic()
        response = _post(f"{sim.base_url}/embeddings", {"input": "x"})
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert elapsed >= 0.45


def test_stall_after_start_holds_responses_only_during_the_stall():
    # Each request is sent at a time read on the simulator's own clock (sim.started_at), half a second or
    # more from either edge of the stall window, and where it was sent is checked: on a loaded machine a
    # request takes tens of milliseconds, so the outcome does not depend on the load.
    with running_simulator(batch_ms=0, token_us=0, stall_s=2.0, stall_after_s=1.0) as sim:
        t0 = sim.started_at
        sent = time.monotonic()
        _post(f"{sim.base_url}/embeddings", {"input": "before"})
        answered = time.monotonic()
        assert answered - t0 < 1.0, "answered before the stall (1.0 s .. 3.0 s after start) began"
        time.sleep(max(0.0, t0 + 1.5 - time.monotonic()))
        during = time.monotonic()
        _post(f"{sim.base_url}/embeddings", {"input": "during"})
        during_answered = time.monotonic()
        time.sleep(max(0.0, t0 + 3.5 - time.monotonic()))
        after = time.monotonic()
        _post(f"{sim.base_url}/embeddings", {"input": "after"})
        after_answered = time.monotonic()
    assert sent >= t0
    assert 1.0 <= during - t0 < 2.5, "sent inside the stall"
    assert during_answered - t0 >= 3.0, "held until the stall ended"
    assert after - t0 >= 3.0 and after_answered - after < 1.0, "not held once the stall is over"


def test_periodic_stall_covers_the_window():
    # Sent half a second into the first stall (3.0 s .. 5.0 s on the simulator's clock), so it is held
    # until the stall's end however loaded the machine is; where it was sent is checked.
    with running_simulator(batch_ms=0, token_us=0, stall_s=2.0, stall_every_s=3.0) as sim:
        t0 = sim.started_at
        time.sleep(max(0.0, t0 + 3.5 - time.monotonic()))
        started = time.monotonic()
        _post(f"{sim.base_url}/embeddings", {"input": "x"})
        answered = time.monotonic()
    assert 3.0 <= started - t0 < 4.5, "sent inside the first stall"
    assert answered - t0 >= 5.0, "held until the stall ended"


def test_counters_and_texts_seen(sim):
    _post(f"{sim.base_url}/embeddings", {"input": ["a", "b"]})
    _post(f"{sim.url}/embed", {"inputs": ["b", "c"]})
    assert sim.stats.requests == 2
    assert sim.stats.requests_ok == 2
    assert sim.stats.texts == 4
    assert sim.texts_seen == {"a", "b", "c"}
    assert sim.stats.duplicate_texts == 1


def test_metrics_use_vllm_names(sim):
    _post(f"{sim.base_url}/embeddings", {"input": "hello world"})
    text = httpx.get(f"{sim.url}/metrics", timeout=10).text
    assert 'vllm:num_requests_running{model_name="sim-embed"} 0' in text
    assert 'vllm:num_requests_waiting{model_name="sim-embed"} 0' in text
    assert f'vllm:prompt_tokens_total{{model_name="sim-embed"}} {count_tokens("hello world")}' in text
    assert 'vllm:e2e_request_latency_seconds_count{model_name="sim-embed"} 1' in text


async def _closed_loop(url: str, concurrency: int, per_slot: int) -> float:
    async with aiohttp.ClientSession() as session:
        async def slot(index):
            for i in range(per_slot):
                async with session.post(url, json={"input": f"slot {index} request {i}"}) as response:
                    assert response.status == 200
                    await response.read()

        started = time.monotonic()
        await asyncio.gather(*(slot(index) for index in range(concurrency)))
        return time.monotonic() - started


def test_concurrent_requests_share_batches():
    # 10 ms per batch: one at a time, 80 requests would need at least 0.8 s.
    with running_simulator(batch_ms=10, token_us=0, native_dimensions=64) as sim:
        elapsed = asyncio.run(_closed_loop(f"{sim.base_url}/embeddings", concurrency=8, per_slot=10))
        batches, largest = sim.stats.batches, sim.stats.largest_batch
    assert largest > 1
    # Counted, not timed (a loaded machine stretches every batch): fewer than half as many batches as
    # requests means the server did less than half the serial work.
    assert batches < 80 / 2
    assert elapsed > 0


def test_batches_respect_the_token_limit():
    # Each text is 2 tokens; a limit of 4 tokens allows at most two requests per batch.
    with running_simulator(batch_ms=5, token_us=0, max_batch_tokens=4, native_dimensions=8) as sim:
        asyncio.run(_closed_loop(f"{sim.base_url}/embeddings", concurrency=6, per_slot=3))
        assert sim.stats.largest_batch <= 2


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="error_rate"):
        SimulatorConfig(error_rate=1.5).validate()
    with pytest.raises(ValueError, match="must not exceed 1"):
        SimulatorConfig(error_rate=0.6, rate_limit_rate=0.6).validate()
    with pytest.raises(TypeError, match="no field"):
        with running_simulator(not_a_field=1):
            pass


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--error-rate", "2"])
    assert exited.value.code == 2
    assert "not a rate between 0 and 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--error-rate", "0.7", "--reset-rate", "0.7"])


def test_cli_arguments_map_onto_the_config():
    argv = ["--port", "9200", "--batch-ms", "20", "--429-rate", "0.1", "--stall-after-s", "3"]
    config = config_from_args(build_parser().parse_args(argv))
    assert (config.port, config.batch_ms, config.rate_limit_rate, config.stall_after_s) == (9200, 20.0, 0.1, 3.0)
    assert config.track_texts is False


def test_command_line_serves_until_terminated():
    process = subprocess.Popen([sys.executable, "-m", "benchmarks", "simulate", "--port", "0", "--dimensions", "8"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = process.stdout.readline()
        port = re.search(r"http://127\.0\.0\.1:(\d+)", line).group(1)
        body = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": "x"}, timeout=10).json()
        assert len(body["data"][0]["embedding"]) == 8
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        process.stdout.close()


def test_stall_now_zero_releases_held_responses():
    with running_simulator(batch_ms=0, token_us=0) as sim:
        sim.stall_now(30)
        with httpx.Client(timeout=10) as client:
            started = time.monotonic()
            timer = threading.Timer(0.3, sim.stall_now, args=(0,))
            timer.start()
            response = client.post(f"{sim.base_url}/embeddings", json={"input": "x"})
            timer.join()
    assert response.status_code == 200
    assert 0.25 <= time.monotonic() - started < 5


def test_stop_does_not_wait_for_a_long_stall():
    started = time.monotonic()
    with running_simulator(batch_ms=0, token_us=0) as sim:
        sim.stall_now(60)
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{sim.base_url}/embeddings", json={"input": "x"}, timeout=0.3)
    assert time.monotonic() - started < 10


def test_refuse_now_refuses_connections_for_a_while_then_serves_again():
    with running_simulator(batch_ms=0, token_us=0) as sim:
        with httpx.Client(timeout=5) as client:
            assert client.post(f"{sim.base_url}/embeddings", json={"input": "before"}).status_code == 200
            # Three seconds of refusal, and the requests "during" are checked to have been sent inside
            # them: on a loaded machine they take milliseconds, so the outcome does not depend on the load.
            refused_at = time.monotonic()
            sim.refuse_now(3.0)
            time.sleep(0.2)
            # The open keep-alive connection was dropped and a new one is refused.
            with pytest.raises(httpx.TransportError):
                client.post(f"{sim.base_url}/embeddings", json={"input": "during"})
            with pytest.raises(httpx.ConnectError):
                httpx.post(f"{sim.base_url}/embeddings", json={"input": "during"}, timeout=5)
            assert time.monotonic() - refused_at < 3.0, "both requests were sent while refusing"
            time.sleep(max(0.0, refused_at + 3.2 - time.monotonic()))
            assert _post(f"{sim.base_url}/embeddings", {"input": "after"}).status_code == 200


def test_frozen_metrics_report_no_load_and_a_counter_that_never_moves():
    assert config_from_args(build_parser().parse_args(["--frozen-metrics"])).frozen_metrics is True
    with running_simulator(frozen_metrics=True, batch_ms=0, token_us=0) as sim:
        assert _post(f"{sim.base_url}/embeddings", {"input": ["a b c"] * 4, "model": "sim-embed"}).status_code == 200
        assert sim.stats.prompt_tokens > 0  # the server counted them, its /metrics does not say so
        text = httpx.get(f"{sim.url}/metrics", timeout=10).text
    assert 'vllm:num_requests_running{model_name="sim-embed"} 0' in text
    assert 'vllm:num_requests_waiting{model_name="sim-embed"} 0' in text
    assert 'vllm:prompt_tokens_total{model_name="sim-embed"} 0' in text
