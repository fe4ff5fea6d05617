"""The embperf simulator: an embedding server that behaves like a batching GPU server.

It is the demo target and the test target. It does not compute real embeddings: every text gets a
deterministic unit vector seeded from the text, so the same text always gets the same vector.

Timing model (see docs/simulator.md):
- Each embedding request first waits ``delay_ms`` on its own (in parallel with all others, like
  network or pre-processing time).
- It then joins one queue. A single scheduler takes the oldest requests whose summed tokens fit in
  ``max_batch_tokens`` (a request is never split; one larger than the limit runs alone), after waiting
  ``batch_wait_ms`` for more to arrive, and "runs" the batch for ``batch_ms + token_us * tokens``.
  Batches run one after another, like one GPU.
- Fault switches (error, 429, reset, wrong dimensions, NaN, stalls) are drawn per request from a
  seeded random generator.

Three API flavors are served at once: OpenAI (``/v1/embeddings`` and ``/embeddings``), TEI (``/embed``)
and Ollama (``/api/embed``), plus ``/v1/models``, ``/health`` and Prometheus ``/metrics``.

Tests use :func:`running_simulator`, which serves on 127.0.0.1, port 0, in a background thread.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import numpy as np
import orjson
from aiohttp import web

from benchmarks.argtypes import fraction, non_negative, positive_int

DEFAULT_MODEL = "sim-embed"

# A word counts one token per started 4 characters; each punctuation mark counts one. Close enough to
# real word-piece tokenizers for English text (about 1.3 tokens per word), and trivially reproducible.
_TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")
_CHARS_PER_TOKEN = 4

USAGE_MODES = ("tokens", "characters", "words", "none", "header")

_STALL_POLL_S = 0.05
_SHUTDOWN_TIMEOUT_S = 1.0  # on stop, requests still held (e.g. in a stall) are cut after this long

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def count_tokens(text: str) -> int:
    """Return the simulator's token count for one text (what it reports as ``usage.prompt_tokens``).

    Each run of word characters counts ``ceil(len / 4)`` tokens, each other non-space character one.
    """
    total = 0
    for match in _TOKEN_PATTERN.finditer(text):
        total += -(-len(match.group()) // _CHARS_PER_TOKEN)
    return total


def reported_usage(texts: list[str], tokens: int, mode: str) -> int | None:
    """What the simulator reports as the prompt tokens of ``texts`` under usage ``mode``."""
    if mode == "characters":
        return sum(len(text) for text in texts)
    if mode == "words":
        return sum(len(text.split()) for text in texts)
    if mode == "none":
        return None
    return tokens


def text_vector(text: str, dimensions: int, native_dimensions: int, renormalise: bool = True) -> np.ndarray:
    """Return the deterministic unit vector (float32) of ``text``, truncated to ``dimensions``.

    The full vector has ``native_dimensions`` components drawn from a normal distribution seeded by a
    hash of the text; a shorter vector is its prefix, re-normalised (like Matryoshka embeddings).
    """
    seed = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
    full = np.random.default_rng(seed).standard_normal(native_dimensions, dtype=np.float32)
    if not renormalise:  # the unit full-length vector, cut: its prefix is shorter than 1
        return full[:dimensions] / np.float32(np.linalg.norm(full))
    vector = full[:dimensions]
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


@dataclass
class SimulatorConfig:
    """Everything that shapes the simulator's behaviour.

    Fields may be changed on a running simulator (``handle.config.error_rate = 0.5``); each request reads
    them when it arrives. Rates are probabilities in [0, 1]; reset, 429 and error rates are drawn
    together from one number per request, so their sum must not exceed 1.
    """

    host: str = "127.0.0.1"
    port: int = 9100
    model: str = DEFAULT_MODEL
    api_key: str | None = None          # when set, embedding and model endpoints need "Bearer <key>"
    native_dimensions: int = 1024       # vector length when a request names no dimensions; the maximum
    max_input_tokens: int = 8192        # a longer text is rejected (400/422), like a model's context limit
    # Batching model of one GPU.
    max_batch_tokens: int = 16384
    batch_ms: float = 5.0               # fixed cost of one batch
    token_us: float = 10.0              # cost per token in a batch
    batch_wait_ms: float = 1.0          # how long the scheduler waits for more requests after the first
    delay_ms: float = 0.0               # extra per-request delay, in parallel (not part of a batch)
    # Faults.
    error_rate: float = 0.0             # HTTP 500
    rate_limit_rate: float = 0.0        # HTTP 429 with Retry-After
    reset_rate: float = 0.0             # connection reset without a response
    wrong_dimensions_rate: float = 0.0  # a success whose vectors are one component short
    nan_rate: float = 0.0               # a success with one NaN component (null in JSON)
    ignore_dimensions: bool = False     # answer full-length vectors whatever 'dimensions' asks for
    unnormalised_truncation: bool = False  # 'dimensions' cuts the unit vector without re-normalising it
    stall_s: float = 0.0                # stall length; no response leaves the server during a stall
    stall_every_s: float = 0.0          # > 0: a stall of stall_s starts every stall_every_s seconds
    stall_after_s: float | None = None  # one stall of stall_s starting this long after start
    seed: int = 0                       # seeds the fault draws
    # What the server reports as its token usage, as real servers do: "tokens" (the count above),
    # "characters" or "words" (a server that counts the wrong thing), "none" (no usage at all), or
    # "header" (only TEI's x-compute-tokens header, no usage in the body).
    usage: str = "tokens"
    track_texts: bool = True            # keep every text seen (tests check uniqueness; off for the CLI)
    # A /metrics endpoint that does not follow the load, as some servers' do (vLLM's pooling models):
    # running and waiting stay at 0 and the prompt token counter never moves.
    frozen_metrics: bool = False

    def validate(self) -> None:
        """Raise ValueError with a plain message when a field is out of range."""
        for name in ("error_rate", "rate_limit_rate", "reset_rate", "wrong_dimensions_rate", "nan_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.error_rate + self.rate_limit_rate + self.reset_rate > 1.0:
            raise ValueError("error_rate + rate_limit_rate + reset_rate must not exceed 1")
        for name in ("batch_ms", "token_us", "batch_wait_ms", "delay_ms", "stall_s", "stall_every_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.stall_every_s and self.stall_s >= self.stall_every_s:
            raise ValueError("stall_s must be shorter than stall_every_s")
        if self.usage not in USAGE_MODES:
            raise ValueError(f"usage must be one of {', '.join(USAGE_MODES)}, got {self.usage!r}")
        if self.native_dimensions < 1 or self.max_batch_tokens < 1 or self.max_input_tokens < 1:
            raise ValueError("native_dimensions, max_batch_tokens and max_input_tokens must be at least 1")


@dataclass
class SimulatorStats:
    """Counters of one simulator since start. Read them from any thread."""

    requests: int = 0               # embedding requests received (all flavors, all outcomes)
    requests_ok: int = 0            # embedding requests answered with vectors
    texts: int = 0                  # texts in successful requests
    prompt_tokens: int = 0          # tokens in successful requests
    duplicate_texts: int = 0        # texts received that had been received before (when track_texts)
    batches: int = 0
    largest_batch: int = 0          # most requests in one batch
    resets: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)
    texts_seen: set[str] = field(default_factory=set)


class _BadRequest(Exception):
    """A request the simulator rejects with a 4xx; ``status`` is the flavor-neutral status."""

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param


@dataclass
class _Job:
    tokens: int
    future: asyncio.Future
    enqueued: float


@dataclass
class _EmbedRequest:
    """A parsed embedding request, flavor-neutral."""

    flavor: str                      # openai | tei | ollama
    texts: list[str]
    model: str
    dimensions: int | None
    encoding: str                    # float | base64


class Simulator:
    """The aiohttp application and its scheduler; one instance per served port."""

    def __init__(self, config: SimulatorConfig):
        config.validate()
        self.config = config
        self.stats = SimulatorStats()
        self._random = random.Random(config.seed)
        self._pending: deque[_Job] = deque()
        self._arrived: asyncio.Event | None = None
        self._scheduler: asyncio.Task | None = None
        self._running_requests = 0
        self._started = time.monotonic()
        self._stall_until = 0.0
        self._latency_counts = [0] * (len(_LATENCY_BUCKETS_S) + 1)
        self._latency_sum = 0.0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._host: str | None = None
        self._outage: asyncio.Task | None = None
        self.port: int | None = None
        self.app = self._build_app()

    # ----- serving -----------------------------------------------------------------------------
    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/embeddings", self._openai)
        app.router.add_post("/embeddings", self._openai)
        app.router.add_post("/embed", self._tei)
        app.router.add_post("/api/embed", self._ollama)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/models", self._models)
        app.router.add_get("/info", self._info)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self, host: str | None = None, port: int | None = None) -> int:
        """Start serving on ``host:port`` (defaults from the config; port 0 picks a free one).

        Returns the bound port.
        """
        self._arrived = asyncio.Event()
        self._started = time.monotonic()
        self._scheduler = asyncio.get_running_loop().create_task(self._schedule())
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
        await self._runner.setup()
        self._host = host or self.config.host
        site = web.TCPSite(self._runner, self._host, self.config.port if port is None else port, reuse_address=True)
        await site.start()
        self._site = site
        self.port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked for
        return self.port

    async def outage(self, seconds: float) -> None:
        """Go away for ``seconds``: stop listening and drop every open connection, so new connections
        are refused (as when the server process is down), then listen on the same port again."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        server = self._runner.server if self._runner is not None else None
        for handler in list(getattr(server, "connections", None) or []):
            transport = handler.transport
            if transport is not None:
                transport.abort()
        await asyncio.sleep(seconds)
        site = web.TCPSite(self._runner, self._host, self.port, reuse_address=True)
        await site.start()
        self._site = site

    async def close(self) -> None:
        """Stop serving and the scheduler."""
        if self._outage is not None:
            self._outage.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._scheduler is not None:
            self._scheduler.cancel()
            try:
                await self._scheduler
            except asyncio.CancelledError:
                pass

    def stall_now(self, seconds: float) -> None:
        """Hold every response for ``seconds`` from now; ``stall_now(0)`` ends such a stall at once.

        Safe to call from any thread (one float assignment); held responses notice within 50 ms.
        """
        self._stall_until = time.monotonic() + seconds

    # ----- the batching scheduler ----------------------------------------------------------------
    async def _schedule(self) -> None:
        assert self._arrived is not None
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            if self.config.batch_wait_ms > 0:
                await asyncio.sleep(self.config.batch_wait_ms / 1000)
            batch = [self._pending.popleft()]
            tokens = batch[0].tokens
            while self._pending and tokens + self._pending[0].tokens <= self.config.max_batch_tokens:
                job = self._pending.popleft()
                batch.append(job)
                tokens += job.tokens
            self._running_requests = len(batch)
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            await asyncio.sleep((self.config.batch_ms + self.config.token_us * tokens / 1000) / 1000)
            self._running_requests = 0
            for job in batch:
                if not job.future.done():
                    job.future.set_result(None)

    async def _run_in_batch(self, tokens: int) -> None:
        assert self._arrived is not None
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Job(tokens, future, time.monotonic()))
        self._arrived.set()
        await future

    # ----- faults and timing ---------------------------------------------------------------------
    def _stall_end(self, now: float) -> float:
        """When the stall covering ``now`` ends, or ``now`` when there is none."""
        config = self.config
        end = self._stall_until if self._stall_until > now else now
        elapsed = now - self._started
        if config.stall_s > 0 and config.stall_after_s is not None:
            if config.stall_after_s <= elapsed < config.stall_after_s + config.stall_s:
                end = max(end, self._started + config.stall_after_s + config.stall_s)
        if config.stall_s > 0 and config.stall_every_s > 0 and elapsed >= config.stall_every_s:
            into = elapsed % config.stall_every_s
            if into < config.stall_s:
                end = max(end, now - into + config.stall_s)
        return end

    async def _hold(self, arrived: float) -> None:
        """The per-request delay, then wait out any stall, so no response leaves during one."""
        if self.config.delay_ms > 0:
            remaining = arrived + self.config.delay_ms / 1000 - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
        while True:
            now = time.monotonic()
            end = self._stall_end(now)
            if end <= now:
                return
            # Short naps, so that a stall ended early (stall_now(0)) releases the held responses.
            await asyncio.sleep(min(end - now, _STALL_POLL_S))

    def _draw_fault(self) -> str | None:
        config = self.config
        draw = self._random.random()
        if draw < config.reset_rate:
            return "reset"
        draw -= config.reset_rate
        if draw < config.rate_limit_rate:
            return "429"
        draw -= config.rate_limit_rate
        if draw < config.error_rate:
            return "500"
        return None

    @staticmethod
    def _reset(request: web.Request) -> None:
        """Close the connection with a TCP reset and no response."""
        transport = request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger on, timeout 0: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    # ----- request handling ----------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        if not self.config.api_key:
            return True
        return request.headers.get("Authorization", "") == f"Bearer {self.config.api_key}"

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._embed(request, "openai")

    async def _tei(self, request: web.Request) -> web.StreamResponse:
        return await self._embed(request, "tei")

    async def _ollama(self, request: web.Request) -> web.StreamResponse:
        return await self._embed(request, "ollama")

    async def _embed(self, request: web.Request, flavor: str) -> web.StreamResponse:
        arrived = time.monotonic()
        self.stats.requests += 1
        response = await self._answer(request, flavor, arrived)
        if response is None:  # reset: nothing goes back
            return web.Response(status=499)
        await self._hold(arrived)
        self._count(response.status, time.monotonic() - arrived)
        return response

    async def _answer(self, request: web.Request, flavor: str, arrived: float) -> web.Response | None:
        config = self.config
        if not self._authorized(request):
            return self._error(flavor, 401, "Incorrect API key provided.", code="invalid_api_key")
        try:
            parsed = self._parse(flavor, await request.read())
        except _BadRequest as exc:
            return self._error(flavor, exc.status, exc.message, param=exc.param)
        # TEI serves one model and ignores the name; the others answer 404 for another model.
        if parsed.model != config.model and flavor != "tei":
            if flavor == "ollama":
                message = f'model "{parsed.model}" not found, try pulling it first'
            else:
                message = f"The model `{parsed.model}` does not exist."
            return self._error(flavor, 404, message, param="model", code="model_not_found")
        if config.track_texts:
            for text in parsed.texts:
                if text in self.stats.texts_seen:
                    self.stats.duplicate_texts += 1
                else:
                    self.stats.texts_seen.add(text)
        fault = self._draw_fault()
        if fault == "reset":
            self.stats.resets += 1
            self._reset(request)
            return None
        if fault == "429":
            return self._error(flavor, 429, "Rate limit reached (simulated).", code="rate_limit_exceeded",
                               headers={"Retry-After": "1"})
        if fault == "500":
            return self._error(flavor, 500, "Internal server error (simulated).", code="internal_error")

        token_counts = [count_tokens(text) for text in parsed.texts]
        for index, tokens in enumerate(token_counts):
            if tokens > config.max_input_tokens:
                return self._error(
                    flavor, 400,
                    f"Input {index} has {tokens} tokens, more than this model's maximum context length "
                    f"of {config.max_input_tokens} tokens.", param="input")
        total_tokens = sum(token_counts)
        queued = time.monotonic()
        await self._run_in_batch(total_tokens)
        inferred = time.monotonic()

        dimensions = (None if config.ignore_dimensions else parsed.dimensions) or config.native_dimensions
        vectors = [text_vector(text, dimensions, config.native_dimensions, not config.unnormalised_truncation)
                   for text in parsed.texts]
        if self._random.random() < config.wrong_dimensions_rate:
            short = dimensions - 1 if dimensions > 1 else 2
            vectors = [text_vector(text, short, max(short, config.native_dimensions)) for text in parsed.texts]
        if self._random.random() < config.nan_rate:
            vectors[0] = vectors[0].copy()
            vectors[0][len(vectors[0]) // 2] = np.nan

        self.stats.requests_ok += 1
        self.stats.texts += len(parsed.texts)
        self.stats.prompt_tokens += total_tokens
        reported = reported_usage(parsed.texts, total_tokens, config.usage)
        return self._success(parsed, vectors, reported, queued - arrived, inferred - queued)

    def _parse(self, flavor: str, raw: bytes) -> _EmbedRequest:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _BadRequest(f"The request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _BadRequest("The request body must be a JSON object.")
        key = "inputs" if flavor == "tei" else "input"
        if key not in body:
            raise _BadRequest(f"Missing required field '{key}'.", param=key)
        value = body[key]
        if isinstance(value, str):
            texts = [value]
        elif isinstance(value, list) and value and all(isinstance(item, str) for item in value):
            texts = value
        else:
            raise _BadRequest(f"'{key}' must be a string or a non-empty list of strings.", param=key)
        if any(not text for text in texts):
            raise _BadRequest(f"'{key}' must not contain empty strings.", param=key)
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise _BadRequest("'model' must be a string.", param="model")
        if flavor == "ollama" and not model:
            raise _BadRequest("model is required", param="model")
        dimensions = body.get("dimensions")
        if dimensions is not None:
            if isinstance(dimensions, bool) or not isinstance(dimensions, int):
                raise _BadRequest("'dimensions' must be an integer.", param="dimensions")
            if not 1 <= dimensions <= self.config.native_dimensions:
                raise _BadRequest(
                    f"'dimensions' must be between 1 and {self.config.native_dimensions}, got {dimensions}.",
                    param="dimensions")
        encoding = "float"
        if flavor == "openai":
            encoding = body.get("encoding_format") or "float"
            if encoding not in ("float", "base64"):
                raise _BadRequest(f"'encoding_format' must be 'float' or 'base64', got {encoding!r}.",
                                  param="encoding_format")
        return _EmbedRequest(flavor, texts, model or self.config.model, dimensions, encoding)

    def _success(self, parsed: _EmbedRequest, vectors: list[np.ndarray], tokens: int | None,
                 queue_s: float, inference_s: float) -> web.Response:
        headers = {
            "x-queue-time": str(int(queue_s * 1000)),
            "x-inference-time": str(int(inference_s * 1000)),
        }
        if tokens is not None:
            headers["x-compute-tokens"] = str(tokens)
        in_body = tokens is not None and self.config.usage != "header"
        if parsed.flavor == "tei":
            body = vectors
        elif parsed.flavor == "ollama":
            body = {"model": parsed.model, "embeddings": vectors,
                    "total_duration": int((queue_s + inference_s) * 1e9), "load_duration": 0}
            if in_body:
                body["prompt_eval_count"] = tokens
        else:
            if parsed.encoding == "base64":
                items = [base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii") for vector in vectors]
            else:
                items = vectors
            body = {"object": "list",
                    "data": [{"object": "embedding", "index": i, "embedding": item} for i, item in enumerate(items)],
                    "model": parsed.model}
            if in_body:
                body["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        # orjson writes numpy float32 arrays directly, and NaN as null (as serde_json-based servers do).
        return web.Response(body=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                            content_type="application/json", headers=headers)

    @staticmethod
    def _error(flavor: str, status: int, message: str, *, param: str | None = None, code: str | None = None,
               headers: dict[str, str] | None = None) -> web.Response:
        """An error response shaped like the flavor's real servers."""
        if flavor == "tei":
            if status == 400:
                status = 422  # TEI answers input validation errors with 422
            kinds = {401: "Unauthorized", 422: "Validation", 429: "Overloaded", 500: "Backend"}
            body = {"error": message, "error_type": kinds.get(status, "Unknown")}
        elif flavor == "ollama":
            body = {"error": message}
        else:
            kinds = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                     429: "rate_limit_error", 500: "server_error"}
            body = {"error": {"message": message, "type": kinds.get(status, "server_error"),
                              "param": param, "code": code}}
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                            headers=headers)

    def _count(self, status: int, latency_s: float) -> None:
        self.stats.status_counts[status] = self.stats.status_counts.get(status, 0) + 1
        if status == 200:
            self._latency_sum += latency_s
            for index, bound in enumerate(_LATENCY_BUCKETS_S):
                if latency_s <= bound:
                    self._latency_counts[index] += 1
                    break
            else:
                self._latency_counts[-1] += 1

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error("openai", 401, "Incorrect API key provided.", code="invalid_api_key")
        body = {"object": "list", "data": [{"id": self.config.model, "object": "model",
                                            "created": int(time.time() - (time.monotonic() - self._started)),
                                            "owned_by": "embperf-simulator",
                                            "max_model_len": self.config.max_input_tokens}]}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _info(self, request: web.Request) -> web.Response:
        # TEI's /info: the served model and the longest input it accepts.
        body = {"model_id": self.config.model, "max_input_length": self.config.max_input_tokens,
                "model_type": {"embedding": {"pooling": "mean"}}}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics_text().encode(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    def metrics_text(self) -> str:
        """Prometheus text exposition with vLLM's metric names."""
        label = f'model_name="{self.config.model}"'
        stats = self.stats
        frozen = self.config.frozen_metrics
        lines = [
            "# HELP vllm:num_requests_running Requests in the batch that runs now.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{label}}} {0 if frozen else self._running_requests}",
            "# HELP vllm:num_requests_waiting Requests queued for a batch.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{label}}} {0 if frozen else len(self._pending)}",
            "# HELP vllm:prompt_tokens_total Prompt tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{label}}} {0 if frozen else stats.prompt_tokens}",
            "# HELP vllm:request_success_total Requests answered with vectors.",
            "# TYPE vllm:request_success_total counter",
            f"vllm:request_success_total{{{label}}} {stats.requests_ok}",
            "# HELP embperf_simulator_batches_total Batches run.",
            "# TYPE embperf_simulator_batches_total counter",
            f"embperf_simulator_batches_total{{{label}}} {stats.batches}",
            "# HELP vllm:e2e_request_latency_seconds Time from arrival to response of successful requests.",
            "# TYPE vllm:e2e_request_latency_seconds histogram",
        ]
        cumulative = 0
        for bound, count in zip(_LATENCY_BUCKETS_S, self._latency_counts, strict=False):
            cumulative += count
            lines.append(f'vllm:e2e_request_latency_seconds_bucket{{{label},le="{bound}"}} {cumulative}')
        cumulative += self._latency_counts[-1]
        lines.append(f'vllm:e2e_request_latency_seconds_bucket{{{label},le="+Inf"}} {cumulative}')
        lines.append(f"vllm:e2e_request_latency_seconds_count{{{label}}} {cumulative}")
        lines.append(f"vllm:e2e_request_latency_seconds_sum{{{label}}} {self._latency_sum:.6f}")
        return "\n".join(lines) + "\n"


class SimulatorHandle:
    """A simulator running in a background thread with its own event loop (for tests and scripts)."""

    def __init__(self, config: SimulatorConfig):
        self.config = config
        self._simulator: Simulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The bound port."""
        assert self._simulator is not None and self._simulator.port is not None
        return self._simulator.port

    @property
    def url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:41234`` (TEI and Ollama flavors use this)."""
        return f"http://{self.config.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI base URL, ``<url>/v1``."""
        return f"{self.url}/v1"

    @property
    def started_at(self) -> float:
        """When the simulator started (time.monotonic()): the clock its stall windows count from."""
        assert self._simulator is not None
        return self._simulator._started

    @property
    def stats(self) -> SimulatorStats:
        """Live counters."""
        assert self._simulator is not None
        return self._simulator.stats

    @property
    def texts_seen(self) -> set[str]:
        """Every distinct text received so far (when ``config.track_texts``)."""
        return self.stats.texts_seen

    def stall_now(self, seconds: float) -> None:
        """Hold every response for ``seconds`` from now."""
        assert self._simulator is not None
        self._simulator.stall_now(seconds)

    def metrics_text(self) -> str:
        """What ``GET /metrics`` would return now."""
        assert self._simulator is not None
        return self._simulator.metrics_text()

    def refuse_now(self, seconds: float) -> None:
        """From now, refuse connections for ``seconds`` (open ones are dropped), then serve again."""
        assert self._simulator is not None and self._loop is not None
        simulator = self._simulator

        def begin() -> None:
            simulator._outage = asyncio.ensure_future(simulator.outage(seconds))

        self._loop.call_soon_threadsafe(begin)

    def start(self) -> SimulatorHandle:
        """Start serving; returns once the port is bound. Raises the server's error if it could not start."""
        self._thread = threading.Thread(target=self._serve, name="embperf-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the simulator did not start within 10 s")
        if self._error is not None:
            raise self._error
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            self._simulator = Simulator(self.config)
            loop.run_until_complete(self._simulator.start(self.config.host, self.config.port))
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._simulator.close())
            # Handlers still held (a stall at stop) are cancelled here rather than left pending.
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.close()

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


@contextmanager
def running_simulator(config: SimulatorConfig | None = None, **overrides) -> Iterator[SimulatorHandle]:
    """Run a simulator on 127.0.0.1, port 0, for the duration of the ``with`` block.

    ``overrides`` set config fields, e.g. ``running_simulator(batch_ms=10, error_rate=0.1)``.
    """
    config = config or SimulatorConfig()
    config.host = "127.0.0.1"
    config.port = 0
    for name, value in overrides.items():
        if name not in {f.name for f in fields(SimulatorConfig)}:
            raise TypeError(f"SimulatorConfig has no field {name!r}")
        setattr(config, name, value)
    handle = SimulatorHandle(config).start()
    try:
        yield handle
    finally:
        handle.stop()


def build_parser() -> argparse.ArgumentParser:
    """The ``simulate`` command's arguments."""
    defaults = SimulatorConfig()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks simulate",
        description="Serve a simulated batching embedding server (OpenAI, TEI and Ollama APIs) for demos and tests.")
    add = parser.add_argument
    add("--host", default=defaults.host, help="address to bind (default %(default)s)")
    add("--port", type=int, default=defaults.port, help="port to bind (default %(default)s)")
    add("--model", default=defaults.model, help="model name served (default %(default)s)")
    add("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    add("--dimensions", type=positive_int, default=defaults.native_dimensions,
        help="vector length without a 'dimensions' field, and the maximum (default %(default)s)")
    add("--max-input-tokens", type=positive_int, default=defaults.max_input_tokens,
        help="longest accepted text in tokens (default %(default)s)")
    add("--max-batch-tokens", type=positive_int, default=defaults.max_batch_tokens,
        help="most tokens in one batch (default %(default)s)")
    add("--batch-ms", type=non_negative, default=defaults.batch_ms,
        help="fixed time per batch in ms (default %(default)s)")
    add("--token-us", type=non_negative, default=defaults.token_us,
        help="time per token in a batch, in microseconds (default %(default)s)")
    add("--batch-wait-ms", type=non_negative, default=defaults.batch_wait_ms,
        help="time the scheduler waits for more requests before a batch (default %(default)s)")
    add("--delay-ms", type=non_negative, default=0.0, help="extra delay per request, in parallel")
    add("--error-rate", type=fraction, default=0.0, help="share of requests answered with HTTP 500")
    add("--rate-limit-rate", "--429-rate", dest="rate_limit_rate", type=fraction, default=0.0,
        help="share of requests answered with HTTP 429")
    add("--reset-rate", type=fraction, default=0.0, help="share of requests whose connection is reset")
    add("--wrong-dimensions-rate", type=fraction, default=0.0,
        help="share of successes whose vectors are one component short")
    add("--nan-rate", type=fraction, default=0.0, help="share of successes with a NaN component")
    add("--ignore-dimensions", action="store_true",
        help="answer full-length vectors whatever 'dimensions' a request asks for")
    add("--unnormalised-truncation", action="store_true",
        help="cut vectors to the requested 'dimensions' without re-normalising them (their norm falls below 1)")
    add("--stall-s", type=non_negative, default=0.0, help="length of a stall in seconds")
    add("--stall-every-s", type=non_negative, default=0.0, help="start a stall every this many seconds")
    add("--stall-after-s", type=non_negative, default=None, help="one stall, this many seconds after start")
    add("--seed", type=int, default=0, help="seed of the fault draws (default %(default)s)")
    add("--usage", choices=USAGE_MODES, default=defaults.usage,
        help="what the reported usage counts: tokens (default), characters or words (as some servers "
             "wrongly do), none, or header (only the x-compute-tokens header)")
    add("--frozen-metrics", action="store_true",
        help="/metrics reports 0 running and 0 waiting requests and a prompt token counter that never moves, "
             "whatever the load (as some servers' metrics do)")
    return parser


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """Map parsed arguments onto a SimulatorConfig (the CLI never keeps the texts it sees)."""
    return SimulatorConfig(
        host=args.host, port=args.port, model=args.model, api_key=args.api_key,
        native_dimensions=args.dimensions, max_input_tokens=args.max_input_tokens,
        max_batch_tokens=args.max_batch_tokens, batch_ms=args.batch_ms, token_us=args.token_us,
        batch_wait_ms=args.batch_wait_ms, delay_ms=args.delay_ms, error_rate=args.error_rate,
        rate_limit_rate=args.rate_limit_rate, reset_rate=args.reset_rate,
        wrong_dimensions_rate=args.wrong_dimensions_rate, nan_rate=args.nan_rate, stall_s=args.stall_s,
        ignore_dimensions=args.ignore_dimensions, unnormalised_truncation=args.unnormalised_truncation,
        stall_every_s=args.stall_every_s, stall_after_s=args.stall_after_s, seed=args.seed, usage=args.usage,
        track_texts=False, frozen_metrics=args.frozen_metrics)


async def _serve_forever(config: SimulatorConfig) -> None:
    simulator = Simulator(config)
    port = await simulator.start()
    print(f"embperf simulator: model {config.model!r} on http://{config.host}:{port} "
          f"(OpenAI base URL http://{config.host}:{port}/v1, TEI /embed, Ollama /api/embed); Ctrl-C stops it",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await simulator.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks simulate``. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(args)
    try:
        config.validate()
    except ValueError as exc:
        parser.error(str(exc))
    try:
        import uvloop
    except ImportError:
        uvloop = None
    try:
        if uvloop is not None:
            uvloop.run(_serve_forever(config))
        else:
            asyncio.run(_serve_forever(config))
    except OSError as exc:
        print(f"embperf simulator: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
