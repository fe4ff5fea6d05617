"""A minimal, fast OpenAI-style embedding target for `make bench`.

It exists to be much faster than any client under test, so that a benchmark of the client measures
the client. It is an asyncio ``Protocol`` on uvloop speaking just enough HTTP/1.1 (keep-alive,
Content-Length bodies, pipelining) and answers every ``POST`` with a pre-encoded OpenAI embeddings
response: one fixed unit vector (``--dimensions``, default 1024 float32 values written as JSON floats)
per input text, and ``usage.prompt_tokens`` of about one token per 4 characters of the request body
(so a client can calibrate its input length). ``GET`` answers a one-model list (``/v1/models``) or
``{"status":"ok"}``.

    python scripts/fast_target.py --port 0                    # prints "listening on http://127.0.0.1:PORT"
    python scripts/fast_target.py --port 0 --delay-ms 20      # every response exactly 20 ms late
    python scripts/fast_target.py --port 0 --processes 2      # two processes sharing one socket

With ``--delay-ms`` each response is written ``delay`` after its request was read: the loop sleeps until
1.5 ms before and spins the rest, because epoll timers only have millisecond resolution and the bench
subtracts the delay from the client's latency.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import socket
import sys
import time

import numpy as np
import orjson

MODEL = "fast-target"
_SPIN_S = 0.0015


class _Responses:
    """Pre-encoded response bodies, one per (number of inputs, dimensions)."""

    def __init__(self, dimensions: int):
        rng = np.random.default_rng(1)
        vector = rng.standard_normal(dimensions).astype(np.float32)
        self._vector = vector / np.linalg.norm(vector)
        self._dimensions = dimensions
        self._prefixes: dict[tuple[int, int], bytes] = {}

    def prefix(self, texts: int, dimensions: int) -> bytes:
        key = (texts, dimensions)
        cached = self._prefixes.get(key)
        if cached is None:
            vector = self._vector[:dimensions] / np.linalg.norm(self._vector[:dimensions])
            data = [{"object": "embedding", "index": i, "embedding": vector} for i in range(texts)]
            body = orjson.dumps({"object": "list", "data": data, "model": MODEL}, option=orjson.OPT_SERIALIZE_NUMPY)
            cached = self._prefixes[key] = body[:-1]  # without the closing brace; usage follows
        return cached

    def embeddings(self, request_body: bytes) -> bytes:
        texts, dimensions = 1, self._dimensions
        try:
            request = orjson.loads(request_body)
            given = request.get("input")
            if isinstance(given, list):
                texts = max(1, len(given))
            if isinstance(request.get("dimensions"), int) and 0 < request["dimensions"] <= self._dimensions:
                dimensions = request["dimensions"]
        except (orjson.JSONDecodeError, AttributeError):
            return _http(400, b'{"error":{"message":"body is not a JSON object","type":"invalid_request_error"}}')
        tokens = max(1, len(request_body) // 4)
        body = b'%s,"usage":{"prompt_tokens":%d,"total_tokens":%d}}' % (self.prefix(texts, dimensions), tokens, tokens)
        return _http(200, body)


def _http(status: int, body: bytes) -> bytes:
    reason = b"OK" if status == 200 else b"Bad Request"
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        status, reason, len(body), body)


_MODELS = _http(200, orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}))
_HEALTH = _http(200, b'{"status":"ok"}')


class _Connection(asyncio.Protocol):
    def __init__(self, responses: _Responses, delay_s: float):
        self._responses = responses
        self._delay_s = delay_s
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport):
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(buffer[:head_end])
            length = 0
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                line_end = lower.find(b"\r\n", at + 2)
                length = int(lower[at + 17: line_end if line_end >= 0 else len(lower)])
            total = head_end + 4 + length
            if len(buffer) < total:
                return
            body = bytes(buffer[head_end + 4: total])
            del buffer[:total]
            if head.startswith(b"POST"):
                response = self._responses.embeddings(body)
            elif b"/models" in head[: head.find(b"\r\n")]:
                response = _MODELS
            else:
                response = _HEALTH
            if self._delay_s > 0:
                self._send_at(time.perf_counter() + self._delay_s, response)
            else:
                self._transport.write(response)

    def _send_at(self, due: float, response: bytes) -> None:
        """Sleep on the loop until shortly before ``due``, then spin to it (timers have 1 ms resolution)."""
        remaining = due - time.perf_counter()
        if remaining > _SPIN_S:
            self._loop.call_later(remaining - _SPIN_S, self._send_at, due, response)
            return
        while time.perf_counter() < due:
            pass
        if not self._transport.is_closing():
            self._transport.write(response)


async def _serve(sock: socket.socket, dimensions: int, delay_s: float) -> None:
    loop = asyncio.get_running_loop()
    responses = _Responses(dimensions)
    server = await loop.create_server(lambda: _Connection(responses, delay_s), sock=sock, backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def _run_process(sock: socket.socket, dimensions: int, delay_s: float) -> None:
    try:
        import uvloop
    except ImportError:
        uvloop = None
    if uvloop is not None:
        uvloop.run(_serve(sock, dimensions, delay_s))
    else:
        asyncio.run(_serve(sock, dimensions, delay_s))


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description="Minimal fast embedding target for make bench.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--dimensions", type=int, default=1024)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="fixed delay of every response")
    parser.add_argument("--processes", type=int, default=1, help="processes serving the same socket")
    args = parser.parse_args(argv)
    if args.dimensions < 1 or args.processes < 1 or args.delay_ms < 0:
        parser.error("--dimensions and --processes must be at least 1, --delay-ms at least 0")

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(1024)
    sock.set_inheritable(True)
    print(f"fast target listening on http://{args.host}:{sock.getsockname()[1]} "
          f"(pid {os.getpid()}, {args.processes} process(es), delay {args.delay_ms} ms)", flush=True)
    delay_s = args.delay_ms / 1000
    if args.processes == 1:
        _run_process(sock, args.dimensions, delay_s)
        return 0
    # Children inherit the listening socket; the kernel hands each connection to one of them.
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_run_process, args=(sock, args.dimensions, delay_s), daemon=True)
                for _ in range(args.processes)]
    for child in children:
        child.start()

    def _stop(signum, frame):
        for child in children:
            if child.is_alive():
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    for child in children:
        child.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
