"""Reading an answer from a server embperf does not control: size caps, encodings, redirects, and
plain words for every way the exchange can go wrong.

A user points embperf at arbitrary URLs, so a server may be down, slow, wrong or hostile. Every
read is bounded: in time by the aiohttp session's total timeout (which covers the headers and every
byte of the body, so a trickle ends as a timeout), and in memory by a byte limit checked against
Content-Length before reading, and while reading when the length is not announced (chunked or
endless answers). Answers are requested uncompressed (`Accept-Encoding: identity`) and never
decompressed, so a small compressed "bomb" cannot expand past the limit; a server that compresses
anyway gets a clear invalid-answer message. Redirects are never followed (a redirected POST may
turn into a GET): the caller reports the Location instead.

Limits (docs/result-schema.md, "Error classes"); embperf sets them, never the server:
- an embedding answer: `answer_limit(texts, dims)` = texts × (dims × 48 + 512) bytes + 64 KiB, room
  for every value written out in full with indentation plus the JSON around it, where dims is the
  plan's vector length or, before it is known (the probe), the installation's maximum vector length
  (EMBPERF_MAX_VECTOR_LENGTH, 16,384): about 0.8 MiB for one text of unknown length;
- one /metrics page: 16 MiB.
"""
import asyncio
import re
import threading

import aiohttp
from yarl import URL

from benchmarks.errors import CONNECT_ERROR, INVALID_RESPONSE, TIMEOUT, InvalidResponse
from benchmarks.outbound import OutboundRefused

MIB = 1 << 20
MAX_VECTOR_LENGTH = 16_384  # the default of the installation's maximum vector length (benchmarks.plan)
MAX_METRICS_BYTES = 16 * MIB  # one Prometheus /metrics page
BYTES_PER_VALUE = 48  # a float written out in full ("-1.2345678901234567e-05"), separator and indentation
BYTES_PER_VECTOR = 512  # the object around one vector (index, "object": "embedding", ...)
ANSWER_SLACK = 64 * 1024  # usage, model name, anything else a server adds

# What every request asks for: an uncompressed answer (see the module docstring).
IDENTITY = {"Accept-Encoding": "identity"}


class AnswerTooLarge(InvalidResponse):
    """The answer is (or announces itself as) larger than its limit; nothing past the limit was kept."""

    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"answer larger than {mib(limit)}, more than a correct answer can take")


def mib(n_bytes: int) -> str:
    """A byte count in MiB for messages: '64 MiB', '2.5 MiB'."""
    return f"{n_bytes / MIB:.3g} MiB"


def answer_limit(n_texts: int, dims: int | None, max_vector_length: int = MAX_VECTOR_LENGTH) -> int:
    """The most bytes a correct embedding answer for `n_texts` vectors of `dims` values can take; a
    vector length not known yet, or above `max_vector_length`, counts as `max_vector_length`."""
    dims = min(dims or max_vector_length, max_vector_length)
    return n_texts * (dims * BYTES_PER_VALUE + BYTES_PER_VECTOR) + ANSWER_SLACK


async def read_body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body of an aiohttp response, at most `limit` bytes; raises AnswerTooLarge beyond it.

    The session must not decompress (auto_decompress=False), so the bytes counted are the bytes
    kept. An announced Content-Length over the limit fails before a byte of the body is read."""
    length = resp.content_length
    if length is not None:
        if length > limit:
            resp.close()
            raise AnswerTooLarge(limit)
        return await resp.read()
    body = bytearray()
    content = resp.content
    while True:
        chunk = await content.readany()
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit:
            resp.close()  # drop the connection: the rest of the answer is never read
            raise AnswerTooLarge(limit)


def check_encoding(headers) -> None:
    """Raise InvalidResponse when a server compressed its answer although asked not to."""
    encoding = headers.get("Content-Encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        raise InvalidResponse(f"the server compressed its answer (Content-Encoding: {encoding[:40]}) "
                              "although embperf asks for none (Accept-Encoding: identity)")


def redirect_text(status: int, headers, url: str | None = None) -> str:
    """Message for a 3xx answer: where it points, and that embperf does not follow it."""
    location = headers.get("Location") if headers is not None else None
    if not location:
        return f"HTTP {status}: the server redirects, but names no Location"
    if url:
        try:
            location = str(URL(url).join(URL(location)))
        except ValueError:
            pass
    return f"HTTP {status}: the server redirects to {location[:200]}: point the target at that URL"


def describe_body(raw: bytes, content_type: str | None) -> str:
    """How an error answer is shown without quoting it: its content type and size."""
    kind = (content_type or "").split(";")[0].strip()[:60] or "no Content-Type"
    return f"{kind}, {len(raw):,} bytes" if raw else f"{kind}, empty body"


def _detail(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).removesuffix(" ^")
    return text if len(text) <= limit else text[: limit - 1] + "…"


_TOO_LONG = re.compile(r"more than (\d+) bytes")
_RECEIVED = re.compile(r"received (\d+) of (\d+) bytes")

NOT_HTTP = "not an HTTP server (what it sent is no HTTP answer; is the scheme right, https:// given as http://?)"


def failure(exc: BaseException, timeout_s: float) -> tuple[str, str]:
    """Outcome class (errors.py) and a plain-words message for an exception raised while sending a
    request or reading its answer with aiohttp.

    The message never quotes what the peer sent: a peer that is not an HTTP server (a database,
    a broker) greets with its banner, and the parser's message would carry those bytes."""
    if isinstance(exc, TimeoutError):
        return TIMEOUT, f"no complete answer within {timeout_s:g} s"
    if isinstance(exc, OutboundRefused):
        return CONNECT_ERROR, str(exc)
    if isinstance(exc, InvalidResponse):
        return INVALID_RESPONSE, str(exc)
    if isinstance(exc, aiohttp.ClientResponseError):
        # Raised by the response parser (raise_for_status is off): the bytes were not HTTP.
        too_long = _TOO_LONG.search(str(exc.message))
        if too_long:
            return INVALID_RESPONSE, f"the answer's headers are too large (a line over {too_long.group(1)} bytes)"
        if "status line" in str(exc.message).lower():
            return INVALID_RESPONSE, NOT_HTTP
        return INVALID_RESPONSE, "the answer is not valid HTTP (its framing or headers are malformed)"
    if isinstance(exc, aiohttp.ClientPayloadError):
        received = _RECEIVED.search(str(exc))
        if received:
            return CONNECT_ERROR, (f"the answer broke off before it was complete (received {received.group(1)} "
                                   f"of the {received.group(2)} bytes announced)")
        return CONNECT_ERROR, "the answer broke off before it was complete"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return CONNECT_ERROR, "the server closed the connection without answering"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return CONNECT_ERROR, f"connection refused by {exc.host}:{exc.port}"
        return CONNECT_ERROR, f"cannot connect to {exc.host}:{exc.port} ({_detail(exc.os_error or exc)})"
    text = str(exc)
    return CONNECT_ERROR, _detail(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def run_blocking(make_coro):
    """Run `make_coro()` to completion from synchronous code, also when the calling thread already
    runs an event loop (then on a private thread), and return its result."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    box = {}

    def target():
        try:
            box["value"] = asyncio.run(make_coro())
        except BaseException as exc:  # handed back to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=target, name="embperf-blocking-request", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
