"""The probe: what a working target serves, and an actionable message for each way it can fail."""
import socket
import threading
from contextlib import contextmanager

import pytest
from aiohttp import web

from benchmarks.probe import probe
from benchmarks.simulator import running_simulator


def openai(url, **extra):
    return {"flavor": "openai", "base_urls": [url], "model": "sim-embed", **extra}


@contextmanager
def tiny_server(handler):
    """A one-route aiohttp server on 127.0.0.1, port 0, answering every POST with `handler`."""
    import asyncio

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_working_target():
    with running_simulator() as sim:
        result = probe(openai(sim.base_url), dimensions=256)
    assert result["ok"] is True and result["error"] is None
    assert result["served_model"] == "sim-embed"
    assert result["vector_length"] == 256
    assert result["prompt_tokens"] > 5
    assert result["latency_ms"] > 0 and result["status"] == 200


def test_base64_target():
    with running_simulator() as sim:
        result = probe(openai(sim.base_url), encoding="base64", dimensions=64)
    assert result["ok"] and result["vector_length"] == 64


def test_connection_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = probe(openai(f"http://127.0.0.1:{port}/v1"))
    assert result["ok"] is False and result["status"] is None
    assert result["error"] == f"connection refused at http://127.0.0.1:{port}/v1/embeddings"
    assert "running" in result["hint"]


def test_wrong_key_is_401_with_a_key_hint():
    with running_simulator(api_key="right") as sim:
        result = probe(openai(sim.base_url, api_key="wrong"))
        assert probe(openai(sim.base_url, api_key="right"))["ok"]
    assert result["status"] == 401
    assert "Incorrect API key" in result["error"]
    assert "API key" in result["hint"]


def test_missing_v1_is_404_with_a_path_hint():
    async def not_found(request):
        return web.json_response({"detail": "Not Found"}, status=404)

    with tiny_server(not_found) as url:
        missing = probe(openai(url))
        extra = probe(openai(url + "/v1"))
    assert missing["status"] == 404 and "Not Found" in missing["error"]
    assert "'/v1' missing" in missing["hint"] and url + "/v1" in missing["hint"]
    assert "'/v1' extra" in extra["hint"]


def test_rejected_request_quotes_the_server():
    with running_simulator(native_dimensions=128) as sim:
        result = probe(openai(sim.base_url), dimensions=4096)
    assert result["status"] in (400, 422)
    assert "'dimensions' must be between 1 and 128, got 4096." in result["error"]
    assert "dimensions" in result["hint"]


def test_non_json_answer():
    async def html(request):
        return web.Response(text="<html>welcome to nginx</html>", content_type="text/html")

    with tiny_server(html) as url:
        result = probe(openai(url + "/v1"))
    assert result["ok"] is False and result["status"] == 200
    # Described, never quoted: the URL may lead to any internal page.
    assert "not JSON" in result["error"] and "text/html, 29 bytes" in result["error"]
    assert "welcome to nginx" not in result["error"]
    assert "flavor" in result["hint"]


def test_wrong_shape():
    async def tei_style(request):
        return web.json_response([[0.1, 0.2]])

    with tiny_server(tei_style) as url:
        result = probe(openai(url + "/v1"))
    assert result["ok"] is False
    assert "no 'data' list" in result["error"]


@pytest.mark.parametrize("flavor", ["tei", "ollama"])
def test_other_flavors(flavor):
    with running_simulator() as sim:
        result = probe({"flavor": flavor, "base_urls": [sim.url], "model": "sim-embed"})
    assert result["ok"] and result["vector_length"] == 1024 and result["prompt_tokens"] > 0


def test_no_base_url():
    result = probe({"flavor": "openai", "base_urls": [], "model": "m"})
    assert result["ok"] is False and "no base URL" in result["error"]


def test_unknown_model_names_it_and_lists_the_served_models():
    with running_simulator(model="all-MiniLM-L6-v2") as sim:
        result = probe(openai(sim.base_url))  # asks for sim-embed
    assert result["status"] == 404
    assert result["error"].startswith("the server has no model 'sim-embed' (HTTP 404)")
    assert "does not exist" in result["error"]
    assert result["hint"] == ("the server does not serve the model 'sim-embed'; it serves: all-MiniLM-L6-v2. "
                              "Set the target's model name to one of them")
    assert "/v1" not in result["hint"]


def test_unknown_model_without_a_model_list_still_names_the_model():
    async def no_model(request):
        return web.json_response({"error": {"message": "The model `sim-embed` does not exist.",
                                            "code": "model_not_found"}}, status=404)

    with tiny_server(no_model) as url:  # answers POST only: GET /v1/models is not there
        result = probe(openai(url + "/v1"))
    assert "'sim-embed'" in result["hint"] and "check the model name" in result["hint"]
    assert "extra" not in result["hint"]


def test_the_v1_hint_only_when_the_path_is_missing():
    async def not_found(request):
        return web.json_response({"detail": "Not Found"}, status=404)

    with tiny_server(not_found) as url:
        result = probe(openai(url + "/v1"))
    assert "is '/v1' extra?" in result["hint"]


@pytest.mark.parametrize("flavor", ["openai", "tei"])
def test_probe_reports_the_longest_input_the_server_accepts(flavor):
    with running_simulator(max_input_tokens=512) as sim:
        base = sim.base_url if flavor == "openai" else sim.url
        result = probe({"flavor": flavor, "base_urls": [base], "model": "sim-embed"})
    assert result["ok"] and result["max_input_tokens"] == 512


def test_ollama_unknown_model_lists_nothing_it_cannot_read():
    with running_simulator() as sim:
        result = probe({"flavor": "ollama", "base_urls": [sim.url], "model": "other"})
    assert result["status"] == 404 and "'other'" in result["hint"]
