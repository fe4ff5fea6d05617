"""The probe: one request that says whether a target works, and if not, what to do about it.

It reports the model name as served, the vector length, the prompt tokens the server counted and
the latency; a failure comes back as a plain-words message plus a hint a person can act on.
The probe sends its request the way the load does (aiohttp, benchmarks/answers.py): within one total
timeout, with the answer capped at what a correct answer of the installation's maximum vector length
can take (`max_vector_length`, 16,384 by default; a longer vector is refused), uncompressed, without
following redirects, and only to addresses the outbound policy allows (benchmarks/outbound.py).
"""
import re
import time

import aiohttp
import orjson
from yarl import URL

from benchmarks.answers import (
    MAX_VECTOR_LENGTH,
    AnswerTooLarge,
    answer_limit,
    check_encoding,
    describe_body,
    failure,
    read_body,
    run_blocking,
)
from benchmarks.errors import TIMEOUT, ConfigError, InvalidResponse
from benchmarks.flavors import error_text, make_flavor, request_headers
from benchmarks.outbound import OutboundPolicy, OutboundRefused
from benchmarks.outbound import connector as outbound_connector

PROBE_TEXT = "embperf probe: the quick brown fox jumps over the lazy dog."
MODELS_MAX_BYTES = 4 * 1024 * 1024  # a model list or an /info document


def _result(**fields) -> dict:
    base = {"ok": False, "served_model": None, "vector_length": None, "prompt_tokens": None,
            "latency_ms": None, "status": None, "error": None, "hint": None, "url": None}
    base.update(fields)
    return base


def _hint_404(flavor_name: str, base_url: str) -> str:
    base = base_url.rstrip("/")
    if flavor_name == "openai":
        if base.endswith("/v1"):
            return (f"is '/v1' extra? Some servers (Infinity) serve /embeddings without it: try {base[:-3]}; "
                    "or the server may not be OpenAI-compatible (try flavor tei or ollama)")
        return f"is '/v1' missing? SGLang and vLLM serve {base}/v1/embeddings: try base URL {base}/v1"
    if flavor_name == "tei":
        return "TEI serves POST /embed at its root: give the base URL without a path, or try flavor openai"
    return "Ollama serves POST /api/embed at its root: give the base URL without a path"


# A 404 about the model, not the path: vLLM/SGLang/Infinity/OpenAI ("The model `x` does not exist"),
# Ollama ("model "x" not found, try pulling it first").
_MODEL_MISSING = re.compile(r"model\b.*\b(does not exist|not found|is not served|unknown)|model_not_found",
                            re.IGNORECASE)


def model_missing(raw: bytes) -> bool:
    """True when an error body says the requested model does not exist (rather than the path)."""
    return bool(_MODEL_MISSING.search(raw[:4096].decode("utf-8", "replace")))


def _model_hint(flavor_name: str, model: str, served: list[str] | None) -> str:
    if served:
        shown = ", ".join(served[:10]) + (f" and {len(served) - 10} more" if len(served) > 10 else "")
        return (f"the server does not serve the model '{model}'; it serves: {shown}. "
                "Set the target's model name to one of them")
    where = "GET /api/tags" if flavor_name == "ollama" else "GET <base URL>/models"
    return f"the server does not serve the model '{model}': check the model name ({where} lists what it serves)"


def _explain(flavor_name: str, base_url: str, url: str, status: int, raw: bytes,
             content_type: str | None = None) -> tuple[str, str]:
    text = error_text(raw, content_type)
    if status in (401, 403):
        return (f"the server refused the request (HTTP {status}): {text}",
                "check the API key (sent as 'Authorization: Bearer <key>')")
    if status == 404:
        return f"nothing at {url} (HTTP 404): {text}", _hint_404(flavor_name, base_url)
    if status in (400, 422):
        return (f"the server rejected the request (HTTP {status}): {text}",
                "check the model name, and whether the model supports the requested dimensions/encoding")
    if status == 429:
        return f"the server is rate limiting (HTTP 429): {text}", "wait, or raise the server's rate limit"
    if status >= 500:
        return f"the server failed (HTTP {status}): {text}", "look at the server's log"
    return f"unexpected answer (HTTP {status}): {text}", "check the URL and flavor"


def _redirect(flavor, url: str, status: int, location: str | None) -> dict:
    if not location:
        return _result(url=url, status=status, error=f"{url} answers with a redirect (HTTP {status}) to nowhere",
                       hint="check the URL and flavor")
    target = str(URL(url).join(URL(location)))
    hint = "point the target at that URL (embperf does not follow redirects: a redirected POST may become a GET)"
    if target.rstrip("/").endswith(flavor.path):
        hint += f"; its base URL would be {target.rstrip('/')[: -len(flavor.path)]}"
    return _result(url=url, status=status, error=f"the server redirects {url} to {target[:200]} (HTTP {status})",
                   hint=hint)


REFUSED_HINT = "point the target at an embedding server this installation allows (docs/security.md)"


def _failed(url: str, exc: BaseException, timeout_s: float) -> dict:
    outcome, message = failure(exc, timeout_s)
    if isinstance(exc, OutboundRefused):
        return _result(url=url, error=f"{url} not contacted: {exc}", hint=REFUSED_HINT)
    if outcome == TIMEOUT:
        return _result(url=url, error=f"no complete answer from {url} within {timeout_s:g} s",
                       hint="the server may still be loading the model; try again, or raise the timeout")
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return _result(url=url, error=f"connection refused at {url}",
                           hint="is the server running, and listening on that host and port?")
        return _result(url=url, error=f"{message} for {url}",
                       hint="is the server running, and listening on that host and port?")
    if isinstance(exc, aiohttp.ClientResponseError):
        return _result(url=url, error=f"{url}: {message}",
                       hint="check the URL's scheme and port: is an embedding server listening there?")
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return _result(url=url, error=f"request to {url} failed: {message}",
                       hint="look at the server's log (did it crash, or cut the answer off?)")
    return _result(url=url, error=f"request to {url} failed: {message}", hint="check the URL (scheme, host, port)")


LONGEST_SETTING = "EMBPERF_MAX_VECTOR_LENGTH"


def _too_long(url: str, length: int, most: int) -> str:
    return (f"wrong answer from {url}: its vectors have {length:,} values, more than this installation's "
            f"maximum vector length of {most:,} ({LONGEST_SETTING})")


async def _probe_urls(flavor, base_urls: list[str], texts: list[str], dims: int | None, timeout_s: float,
                      headers: dict, policy: OutboundPolicy, details: bool = False,
                      max_vector_length: int = MAX_VECTOR_LENGTH) -> dict:
    body = flavor.body(texts)
    # embperf sizes the answer, never the server: the requested length, or the installation's maximum.
    limit = answer_limit(len(texts), dims, max_vector_length)
    # Every URL is checked before the first request, so a refused one means nothing was sent at all.
    for base_url in base_urls:
        url = flavor.url(base_url)
        try:
            policy.check_url(url)
        except OutboundRefused as exc:
            return _failed(url, exc, timeout_s)
        except ValueError as exc:
            return _result(url=url, error=str(exc), hint="check the URL (scheme, host, port)")
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s), headers=headers,
                                    connector=outbound_connector(policy), auto_decompress=False,
                                    raise_for_status=False)
    first = None
    async with session:
        for base_url in base_urls:
            url = flavor.url(base_url)
            start = time.perf_counter()
            try:
                async with session.post(url, data=body, allow_redirects=False) as resp:
                    status, resp_headers = resp.status, resp.headers
                    raw = await read_body(resp, limit)
            except AnswerTooLarge as exc:
                if 200 <= status < 300:
                    shape = (f"{len(texts)} vector(s) of {dims:,} values" if dims else
                             f"{len(texts)} vector(s) of at most {max_vector_length:,} values, this installation's "
                             f"maximum vector length ({LONGEST_SETTING})")
                    return _result(url=url, status=status, error=f"wrong answer from {url}: {exc} for {shape}",
                                   hint="a server with longer vectors needs a higher maximum from the operator; "
                                        f"otherwise check that this is a {flavor.name}-flavor embedding endpoint")
                return _result(url=url, status=status, error=f"wrong answer from {url}: HTTP {status}, {exc}",
                               hint=f"is this a {flavor.name}-flavor embedding endpoint? check the flavor and URL")
            except (TimeoutError, aiohttp.ClientError, OSError, OutboundRefused) as exc:
                return _failed(url, exc, timeout_s)
            latency_ms = round((time.perf_counter() - start) * 1000, 3)
            if 300 <= status < 400:
                return _redirect(flavor, url, status, resp_headers.get("Location"))
            if not 200 <= status < 300:
                error, hint = _explain(flavor.name, base_url, url, status, raw, resp_headers.get("Content-Type"))
                if status == 404 and model_missing(raw):
                    # The path exists (the server answered about the model): name the served models.
                    message = error_text(raw, resp_headers.get("Content-Type"))
                    error = f"the server has no model '{flavor.model}' (HTTP 404): {message}"
                    hint = _model_hint(flavor.name, flavor.model, await served_models(session, flavor.name, base_url))
                return _result(url=url, status=status, latency_ms=latency_ms, error=error, hint=hint)
            try:
                check_encoding(resp_headers)
                found = flavor.inspect(raw, len(texts), resp_headers)
            except InvalidResponse as exc:
                return _result(url=url, status=status, latency_ms=latency_ms,
                               error=f"wrong answer from {url}: {exc} "
                                     f"({describe_body(raw, resp_headers.get('Content-Type'))})",
                               hint=f"is this a {flavor.name}-flavor embedding endpoint? check the flavor and URL")
            if found["vector_length"] > max_vector_length:
                return _result(url=url, status=status, latency_ms=latency_ms,
                               error=_too_long(url, found["vector_length"], max_vector_length),
                               hint="ask for fewer dimensions, or ask the operator to raise the maximum")
            if first is None:
                first = _result(ok=True, url=url, status=status, latency_ms=latency_ms, **found)
        if details and first is not None:
            first["max_input_tokens"] = await max_input_tokens(session, flavor, base_urls[0])
    return first


async def _get_json(session, url: str):
    """GET a small JSON document; None when it cannot be had (the server need not offer it)."""
    try:
        async with session.get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                return None
            return orjson.loads(await read_body(resp, MODELS_MAX_BYTES))
    except (TimeoutError, aiohttp.ClientError, OSError, AnswerTooLarge, orjson.JSONDecodeError):
        return None


async def served_models(session, flavor_name: str, base_url: str) -> list[str] | None:
    """The model names a server lists (`/v1/models`, Ollama's `/api/tags`), or None."""
    base = base_url.rstrip("/")
    if flavor_name == "ollama":
        doc = await _get_json(session, f"{base}/api/tags")
        items, key = (doc.get("models") if isinstance(doc, dict) else None), "name"
    else:
        doc = await _get_json(session, f"{base}/models")
        items, key = (doc.get("data") if isinstance(doc, dict) else None), "id"
    if not isinstance(items, list):
        return None
    names = [item.get(key) for item in items if isinstance(item, dict) and isinstance(item.get(key), str)]
    return names or None


async def max_input_tokens(session, flavor, base_url: str) -> int | None:
    """The longest input the server says it accepts: `/v1/models` `max_model_len` (vLLM, SGLang) or
    TEI's `/info` `max_input_length`; None when it does not say."""
    base = base_url.rstrip("/")
    if flavor.name == "tei":
        doc = await _get_json(session, f"{base}/info")
        value = doc.get("max_input_length") if isinstance(doc, dict) else None
    elif flavor.name == "openai":
        doc = await _get_json(session, f"{base}/models")
        items = doc.get("data") if isinstance(doc, dict) else None
        items = [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
        entry = next((i for i in items if i.get("id") == flavor.model), items[0] if len(items) == 1 else None)
        value = entry.get("max_model_len") if entry else None
    else:
        value = None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def probe_texts(target: dict, texts: list[str], *, dimensions: int | None = None, encoding: str = "float",
                timeout_s: float = 10, outbound: OutboundPolicy | None = None, details: bool = False,
                max_vector_length: int = MAX_VECTOR_LENGTH) -> dict:
    """Send one request with `texts` to every base URL of the target; the first failure, or the
    first URL's findings. Each request ends within `timeout_s` (headers and body together), its
    answer is capped (benchmarks/answers.py), and a redirect is reported, not followed.
    Every address passes the outbound policy (`outbound`, by default the one of
    $EMBPERF_ALLOWED_TARGETS) before anything is sent to it. A vector longer than
    `max_vector_length` fails the probe, and no answer is read past what such a vector can take.
    Raises ConfigError for a target the engine cannot use at all."""
    flavor = make_flavor(target.get("flavor", "openai"), target.get("model", ""), dimensions=dimensions,
                         encoding=encoding)
    base_urls = list(target.get("base_urls") or [])
    if not base_urls:
        raise ConfigError("the target has no base URL")
    headers = request_headers(target.get("api_key"))
    policy = outbound if outbound is not None else OutboundPolicy.from_environment()
    return run_blocking(lambda: _probe_urls(flavor, base_urls, texts, dimensions, timeout_s, headers, policy, details,
                                                   max_vector_length))


def probe(target: dict, *, dimensions: int | None = None, encoding: str = "float", timeout_s: float = 10,
          outbound: OutboundPolicy | None = None, max_vector_length: int = MAX_VECTOR_LENGTH) -> dict:
    """One request to the target: what it serves, or a message and hint saying why it does not work.

    Returns {"ok", "served_model", "vector_length", "prompt_tokens", "latency_ms", "status",
    "error", "hint", "url"}, and on success "max_input_tokens" (the longest input the server says it
    accepts, or None)."""
    try:
        return probe_texts(target, [PROBE_TEXT], dimensions=dimensions, encoding=encoding, timeout_s=timeout_s,
                           outbound=outbound, details=True, max_vector_length=max_vector_length)
    except ConfigError as exc:
        return _result(error=str(exc), hint="fix the target's settings")
