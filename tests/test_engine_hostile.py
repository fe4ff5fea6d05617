"""A target that is down, slow, wrong or hostile: every engine path (load loop, probe, /metrics
scraper) ends within its timeout, in bounded memory, in a clear error class with a message a
person can act on, and the run goes on.

Each hostile server here is a raw asyncio socket server on 127.0.0.1, port 0, that reads a request
and answers with whatever bytes the test wants; it is stopped (every connection cancelled) when the
test ends.
"""
import asyncio
import contextlib
import gzip
import queue
import threading
import time

import orjson
import pytest

from benchmarks.answers import MIB, answer_limit, mib
from benchmarks.cli import main
from benchmarks.flavors import make_flavor, request_headers
from benchmarks.inputs import InputSource
from benchmarks.loadgen import LevelRunner
from benchmarks.probe import probe
from benchmarks.sweep import run_sweep
from benchmarks.telemetry import Telemetry
from benchmarks.telemetry.prometheus import ScrapeError, Scraper

DIMS = 8
GOOD = orjson.dumps({"data": [{"embedding": [0.1] * DIMS, "index": 0}], "model": "m",
                     "usage": {"prompt_tokens": 5}})
METRICS = b"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 3\n"


class HostileServer:
    """Raw HTTP/1.1 on 127.0.0.1:0: `answer(request, writer)` writes whatever it likes and returns True
    to keep the connection for another request. Records each request's method, path and headers, and
    how many bytes it wrote per connection."""

    def __init__(self, answer):
        self.answer = answer
        self.requests: list[dict] = []
        self.sent: list[int] = []
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _serve(self, reader, writer):
        counter = [0]
        self.sent.append(0)
        slot = len(self.sent) - 1
        real_write = writer.write

        def write(data):
            counter[0] += len(data)
            self.sent[slot] = counter[0]
            real_write(data)

        writer.write = write
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
                await reader.readexactly(int(headers.get("content-length", 0)))
                request = {"method": method, "path": path, "headers": headers}
                self.requests.append(request)
                if not await self.answer(request, writer):
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def stop(self):
        async def shut():
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@contextlib.contextmanager
def hostile(answer):
    server = HostileServer(answer)
    try:
        yield server
    finally:
        server.stop()


def head(status="200 OK", length: int | None = None, extra: bytes = b"", content_type=b"application/json") -> bytes:
    lines = b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + content_type + b"\r\n"
    if length is not None:
        lines += b"Content-Length: %d\r\n" % length
    return lines + extra + b"\r\n"


def answer_with(body: bytes, status="200 OK", extra: bytes = b"", content_type=b"application/json"):
    async def answer(request, writer):
        writer.write(head(status, len(body), extra, content_type) + body)
        await writer.drain()
        return True

    return answer


async def endless_chunks(request, writer):
    writer.write(head(extra=b"Transfer-Encoding: chunked\r\n"))
    chunk = b"%x\r\n" % 65536 + b"7" * 65536 + b"\r\n"
    while True:
        writer.write(chunk)
        await writer.drain()


def trickle(what: str):
    """Headers at once, then the body one byte every 0.1 s ("body"); or the status line itself that way ("head")."""
    async def answer(request, writer):
        if what == "head":
            data = head(length=len(GOOD)) + GOOD
        else:
            writer.write(head(length=len(GOOD)))
            data = GOOD
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            await writer.drain()
            await asyncio.sleep(0.1)
        return False

    return answer


def run_level(url: str, *, duration_s=0.3, timeout_s=1.0, concurrency=2, path="/embeddings") -> tuple[dict, float]:
    """One LevelRunner against `url` (no probe, no sweep): its partial and the wall time it took."""
    flavor = make_flavor("openai", "m", dimensions=DIMS)
    work = {"index": 0, "mode": "closed", "concurrency": concurrency, "t0": time.perf_counter() + 0.02,
            "warmup_s": 0, "duration_s": duration_s, "timeout_s": timeout_s, "dims": DIMS, "keep_samples": False,
            "tokens_per_text_estimate": 5}
    runner = LevelRunner(work, proc=0, flavor=flavor, urls=[url + path], headers=request_headers(None),
                         inputs=InputSource("unique", chars_per_text=40, seed=1), out=queue.Queue(),
                         stop_event=threading.Event())
    began = time.perf_counter()
    partial = asyncio.run(runner.run())
    return partial, time.perf_counter() - began


def only(partial: dict, outcome: str) -> str:
    """Assert every request of the level landed in `outcome`; return that class's example message."""
    counts = {k: v for k, v in partial["counts"].items() if v}
    assert list(counts) == [outcome], counts
    return partial["examples"][outcome]


def probe_url(url: str, timeout_s=1.0) -> tuple[dict, float]:
    began = time.perf_counter()
    result = probe({"flavor": "openai", "base_urls": [url], "model": "m"}, timeout_s=timeout_s)
    return result, time.perf_counter() - began


# ---- size ------------------------------------------------------------------------------------------

def test_the_cap_follows_what_a_correct_answer_can_take():
    # Not known yet (the probe): the installation's maximum vector length, never what a server says.
    assert answer_limit(1, None) == 16_384 * 48 + 512 + 64 * 1024 < 0.82 * MIB
    assert answer_limit(1, 10_000_000) == answer_limit(1, None)
    assert answer_limit(1, None, 1024) == answer_limit(1, 1024)
    assert answer_limit(32, 1024) == 32 * (1024 * 48 + 512) + 64 * 1024  # about 1.6 MiB
    assert answer_limit(1, DIMS) < 0.07 * MIB


def test_an_announced_10_gb_answer_is_refused_unread():
    async def huge(request, writer):
        writer.write(head(length=10 * 2**30) + b"[" + b"0.1," * 1000)
        await writer.drain()
        await asyncio.sleep(5)  # then nothing: the client must not wait for the rest

    with hostile(huge) as server:
        partial, _ = run_level(server.url)
        result, _ = probe_url(server.url)
    # Refused on the header: had the client waited for the body, these would be timeouts.
    assert f"answer larger than {mib(answer_limit(1, DIMS))}" in only(partial, "invalid_response")
    assert "1 vectors of 8 values" in partial["examples"]["invalid_response"]
    assert result["ok"] is False and f"answer larger than {mib(answer_limit(1, None))}" in result["error"]
    assert "at most 16,384 values, this installation's maximum vector length" in result["error"]


def test_an_endless_chunked_answer_stops_at_the_cap():
    with hostile(endless_chunks) as server:
        partial, _ = run_level(server.url, concurrency=1)
        result, _ = probe_url(server.url, timeout_s=5)
        load_sent = max(server.sent[:-1])
    assert f"answer larger than {mib(answer_limit(1, DIMS))}" in only(partial, "invalid_response")
    # The client stopped reading at the cap: the server could push no more than that plus what the
    # kernel's socket buffers hold (here at most 4 MiB sending, 32 MiB receiving) before the drop.
    assert load_sent < answer_limit(1, DIMS) + 40 * MIB
    assert result["ok"] is False and f"answer larger than {mib(answer_limit(1, None))}" in result["error"]
    assert server.sent[-1] < answer_limit(1, None) + 40 * MIB


def test_an_oversized_error_body_keeps_its_status_class():
    async def huge_error(request, writer):
        writer.write(head("500 Internal Server Error", length=3 * 2**30))
        await writer.drain()
        await asyncio.sleep(5)

    with hostile(huge_error) as server:
        partial, _ = run_level(server.url)
    assert only(partial, "http_5xx") == f"HTTP 500, with an error text larger than {mib(answer_limit(1, DIMS))}"


# ---- compression -----------------------------------------------------------------------------------

def test_a_gzip_bomb_is_never_inflated():
    # 64 KiB on the wire, 64 MiB once inflated.
    bomb = gzip.compress(b'{"data": [{"embedding": [' + b"0" * (64 * MIB) + b"]}]}", compresslevel=9)
    assert len(bomb) < 200_000
    with hostile(answer_with(bomb, extra=b"Content-Encoding: gzip\r\n")) as server:
        partial, _ = run_level(server.url)
        result, _ = probe_url(server.url)
        asked = {r["headers"].get("accept-encoding") for r in server.requests}
    assert asked == {"identity"}  # every request asked for an uncompressed answer
    assert "compressed its answer (Content-Encoding: gzip)" in only(partial, "invalid_response")
    assert result["ok"] is False and "Content-Encoding: gzip" in result["error"]


# ---- redirects -------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", ["301 Moved Permanently", "302 Found", "307 Temporary Redirect"])
def test_redirects_are_named_not_followed(status):
    with hostile(answer_with(b"", status, extra=b"Location: /v1/embeddings\r\n")) as server:
        partial, _ = run_level(server.url)
        result, _ = probe_url(server.url)
        methods = {r["method"] for r in server.requests}
    code = status.split()[0]
    assert only(partial, "http_4xx") == (f"HTTP {code}: the server redirects to {server.url}/v1/embeddings: "
                                         "point the target at that URL")
    assert methods == {"POST"}  # nothing followed the redirect (a 301/302 would have become a GET)
    assert result["ok"] is False and result["status"] == int(code)
    assert f"redirects {server.url}/embeddings to {server.url}/v1/embeddings" in result["error"]
    assert f"base URL would be {server.url}/v1" in result["hint"]


# ---- slow answers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("what", ["body", "head"])
def test_a_trickle_ends_as_timeout_at_the_plan_timeout(what):
    with hostile(trickle(what)) as server:
        partial, took = run_level(server.url, duration_s=0.2, timeout_s=1.0)
        result, probe_took = probe_url(server.url, timeout_s=1.0)
    assert only(partial, "timeout") == "no complete answer within 1 s"
    # Every request waited its whole timeout (total, not per read: a byte arrived every 0.1 s) ...
    assert partial["counts"]["timeout"] >= 2
    # ... and no longer: the whole answer would take 12 s to trickle in.
    assert took < 5
    assert result["ok"] is False and "no complete answer" in result["error"] and "within 1 s" in result["error"]
    assert probe_took < 5


# ---- malformed HTTP --------------------------------------------------------------------------------

async def _close_mid_body(request, writer):
    writer.write(head(length=1000) + GOOD[:20])
    await writer.drain()
    return False


async def _chunked_then_close(request, writer):
    writer.write(head(extra=b"Transfer-Encoding: chunked\r\n") + b"10\r\n0123456789abcdef\r\n")
    await writer.drain()
    return False


async def _bad_chunk(request, writer):
    writer.write(head(extra=b"Transfer-Encoding: chunked\r\n") + b"zz\r\nnot a chunk\r\n")
    await writer.drain()
    return False


async def _garbage(request, writer):
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    await writer.drain()
    return False


async def _tls_alert(request, writer):
    writer.write(b"\x15\x03\x01\x00\x02\x02\x46")  # what a TLS server says to a plain-HTTP client
    await writer.drain()
    return False


async def _huge_header(request, writer):
    writer.write(head(length=len(GOOD), extra=b"X-Padding: " + b"p" * 100_000 + b"\r\n") + GOOD)
    await writer.drain()
    return True


async def _no_answer(request, writer):
    return False  # reads the request, closes the connection


async def _long_content_length(request, writer):
    writer.write(head(length=len(GOOD) + 50) + GOOD)  # promises more than it sends, keeps the connection
    await writer.drain()
    await asyncio.sleep(5)


@pytest.mark.parametrize(
    ("answer", "outcome", "message"),
    [
        (_close_mid_body, "connect_error", "the answer broke off before it was complete (received 20 of the 1000 "
                                           "bytes announced)"),
        (_chunked_then_close, "connect_error", "the answer broke off before it was complete"),
        (_bad_chunk, "invalid_response", "the answer is not valid HTTP (its framing or headers are malformed)"),
        (_garbage, "invalid_response", "not an HTTP server"),
        (_tls_alert, "invalid_response", "not an HTTP server"),
        (_huge_header, "invalid_response", "the answer's headers are too large (a line over 8190 bytes)"),
        (_no_answer, "connect_error", "the server closed the connection without answering"),
        (_long_content_length, "timeout", "no complete answer within 1 s"),
    ],
    ids=["short-body", "chunked-cut", "bad-chunk", "garbage", "tls", "huge-header", "no-answer", "long-length"],
)
def test_malformed_http_lands_in_a_class(answer, outcome, message):
    with hostile(answer) as server:
        partial, _ = run_level(server.url, duration_s=0.2)
        result, _ = probe_url(server.url)
    assert only(partial, outcome).startswith(message)
    assert result["ok"] is False and result["error"] and result["hint"]
    assert result["url"] == server.url + "/embeddings"


# ---- hostile JSON ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 2_000 + b"]" * 2_000, "response is nested more than 1,024 levels deep"),
        (b'{"data": [{"embedding": [1e400, 0, 0, 0, 0, 0, 0, 0]}]}', "a number too large for a 64-bit float"),
        (b'{"data": [{"embedding": [0.1, NaN, 0, 0, 0, 0, 0, 0]}]}', "non-finite numbers (NaN or Infinity"),
        (b'{"data": [{"embedding": [true, false, true, true, true, true, true, true]}]}', "holds true/false"),
        (b'{"data": [{"embedding": ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8"]}]}',
         "embedding 0 holds a value that is not a number: str '0.1'"),
        (b'{"data": [{"embedding": [[0.1], 0, 0, 0, 0, 0, 0, 0]}]}', "not a number: list [0.1]"),
        (b'{"data": [{"embedding": {"0": 0.1}}]}', "embedding 0 is dict, expected a list of numbers"),
        (b'{"data": ["embedding"]}', "an item of 'data' has no 'embedding'"),
        (b'{"data": [{"embedding": [0.1, 0, 0, 0, 0, 0, 0, 0]}], "model": "\xff\xfe"}',
         "response is not valid UTF-8 text"),
        (b"\x00\x01\x02binary", "response is not JSON ("),
        (b"", "response is not JSON ("),
    ],
    ids=["deep", "1e400", "nan", "bools", "strings", "nested", "dict", "item-str", "non-utf8", "binary", "empty"],
)
def test_hostile_json_is_an_invalid_response(body, message):
    with hostile(answer_with(body)) as server:
        partial, _ = run_level(server.url, duration_s=0.2)
        result, _ = probe_url(server.url)
    assert message in only(partial, "invalid_response")
    assert result["ok"] is False and message in result["error"]


def test_hostile_token_counts_are_ignored_not_trusted():
    body = orjson.dumps({"data": [{"embedding": [0.1] * DIMS}], "usage": {"prompt_tokens": -5}})
    with hostile(answer_with(body)) as server:
        partial, _ = run_level(server.url, duration_s=0.2)
    assert partial["counts"]["ok"] == sum(partial["counts"].values()) > 0, partial["counts"]
    # A negative count is no count: every request fell back to the estimate (5 tokens per text).
    assert partial["tokens_missing"] >= partial["counts"]["ok"]
    assert partial["window_tokens"] == 5 * partial["window_texts"] > 0


# ---- the run goes on, or fails with the message --------------------------------------------------------

def test_a_target_turning_hostile_after_the_probe_fails_requests_not_the_run():
    state = {"hostile": False}

    async def answer(request, writer):
        if state["hostile"]:
            return await endless_chunks(request, writer)
        body = orjson.dumps({"data": [{"embedding": [0.1] * DIMS}], "model": "m", "usage": {"prompt_tokens": 4}})
        writer.write(head(length=len(body)) + body)
        await writer.drain()
        return True

    def turn(progress):
        if progress["phase"] != "probe":
            state["hostile"] = True

    with hostile(answer) as server:
        doc = run_sweep({"flavor": "openai", "base_urls": [server.url], "model": "m"},
                        {"levels": [1, 2], "warmup_s": 0, "duration_s": 0.3, "tokens": 4, "dimensions": DIMS,
                         "timeout_s": 2, "abort_error_rate": 1.0}, on_progress=turn)
    assert doc["run"]["status"] == "succeeded"
    for level in doc["levels"]:
        assert level["status"] == "completed"
        assert level["errors"]["invalid_response"] == level["requests_failed"] > 0
        assert "answer larger than " in level["error_examples"]["invalid_response"]


def test_the_cli_fails_with_the_message_not_a_traceback(capsys):
    with hostile(answer_with(b"", "302 Found", extra=b"Location: https://elsewhere.example/v1/embeddings\r\n")) as s:
        code = main(["run", "--url", s.url, "--model", "m", "--levels", "1", "--duration", "0.2", "--warmup", "0"])
    err = capsys.readouterr().err
    assert code == 1  # a failed run: the message, on one line
    assert "embperf: the server redirects" in err and "https://elsewhere.example/v1/embeddings" in err
    assert "base URL would be https://elsewhere.example/v1" in err
    assert "Traceback" not in err


# ---- /metrics ----------------------------------------------------------------------------------------

async def _metrics_trickle(request, writer):
    writer.write(head(length=len(METRICS), content_type=b"text/plain"))
    for i in range(len(METRICS)):
        writer.write(METRICS[i:i + 1])
        await writer.drain()
        await asyncio.sleep(0.1)
    return False


async def _metrics_huge(request, writer):
    writer.write(head(length=20 * 2**30, content_type=b"text/plain"))
    await writer.drain()
    await asyncio.sleep(5)


async def _metrics_redirect_loop(request, writer):
    writer.write(head("302 Found", length=0, extra=b"Location: /metrics\r\n"))
    await writer.drain()
    return True


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (endless_chunks, "the metrics page is larger than 16 MiB"),
        (_metrics_huge, "the metrics page is larger than 16 MiB"),
        (_metrics_trickle, "no complete answer within 0.5 s"),
        (answer_with(b"\x00\xff garbage {{{ not metrics\n" * 100, content_type=b"text/plain"), "not Prometheus text"),
        (answer_with(gzip.compress(METRICS), extra=b"Content-Encoding: gzip\r\n"), "the page is compressed"),
        (_metrics_redirect_loop, "HTTP 302: the metrics URL redirects, and embperf follows no redirects"),
        (_garbage, "not an HTTP server"),
    ],
    ids=["endless", "huge", "trickle", "garbage-text", "gzip", "redirect-loop", "not-http"],
)
def test_a_hostile_metrics_url_is_one_failed_scrape(answer, message):
    with hostile(answer) as server:
        scraper = Scraper(server.url + "/metrics", timeout_s=0.5)
        began = time.perf_counter()
        with pytest.raises(ScrapeError) as info:
            scraper.scrape(0.0)
        took = time.perf_counter() - began
        scraper.close()
    assert str(info.value).startswith(message)
    assert took < 4  # the trickle would take 7 s, a stream or a 20 GB page far longer


def test_a_hostile_metrics_url_gives_a_note_not_a_failed_run():
    with hostile(endless_chunks) as server:
        telemetry = Telemetry(metrics_urls=[server.url + "/metrics"], scrape_interval_s=0.2)
        telemetry.start()
        telemetry.begin_level(0)
        # Waits for what the note needs rather than for a fixed time (a loaded machine reads 16 MiB slower):
        # the scraper asks again only once its first scrape has ended, so a second request means one failed.
        deadline = time.monotonic() + 60
        while len(server.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        doc = telemetry.end_level(requests_ok=10, prompt_tokens=100, duration_s=1.0)
        telemetry.close()
    notes = " ".join(doc.get("telemetry_notes", []))
    assert f"metrics URL {server.url}/metrics:" in notes
    assert "scrapes failed (the metrics page is larger than 16 MiB)" in notes
