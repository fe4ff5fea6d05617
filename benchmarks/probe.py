"""The probe: one request that says whether a target works, and if not, what to do about it.

It reports the model name as served, the vector length, the prompt tokens the server counted and
the latency; a failure comes back as a plain-words message plus a hint a person can act on.
The probe uses httpx (a single request costs nothing that matters); the load uses aiohttp.
"""
import time

import httpx

from benchmarks.errors import ConfigError, InvalidResponse
from benchmarks.flavors import error_text, make_flavor, request_headers

PROBE_TEXT = "embperf probe: the quick brown fox jumps over the lazy dog."


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


def _explain(flavor_name: str, base_url: str, url: str, status: int, raw: bytes) -> tuple[str, str]:
    text = error_text(raw)
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


def probe_texts(target: dict, texts: list[str], *, dimensions: int | None = None, encoding: str = "float",
                timeout_s: float = 10, client: httpx.Client | None = None) -> dict:
    """Send one request with `texts` to every base URL of the target; the first failure, or the
    first URL's findings. Raises ConfigError for a target the engine cannot use at all."""
    flavor = make_flavor(target.get("flavor", "openai"), target.get("model", ""), dimensions=dimensions,
                         encoding=encoding)
    base_urls = list(target.get("base_urls") or [])
    if not base_urls:
        raise ConfigError("the target has no base URL")
    body = flavor.body(texts)
    headers = request_headers(target.get("api_key"))
    own = client is None
    client = client or httpx.Client(timeout=timeout_s)
    first = None
    try:
        for base_url in base_urls:
            url = flavor.url(base_url)
            start = time.perf_counter()
            try:
                resp = client.post(url, content=body, headers=headers, timeout=timeout_s)
            except httpx.ConnectError as exc:
                reason = "connection refused" if "refused" in str(exc).lower() else f"cannot connect ({exc})"
                return _result(url=url, error=f"{reason} at {url}",
                               hint="is the server running, and listening on that host and port?")
            except httpx.TimeoutException:
                return _result(url=url, error=f"no answer from {url} within {timeout_s:g} s",
                               hint="the server may still be loading the model; try again, or raise the timeout")
            except httpx.HTTPError as exc:
                return _result(url=url, error=f"request to {url} failed: {type(exc).__name__}: {exc}",
                               hint="check the URL (scheme, host, port)")
            latency_ms = round((time.perf_counter() - start) * 1000, 3)
            raw = resp.content
            if not 200 <= resp.status_code < 300:
                error, hint = _explain(flavor.name, base_url, url, resp.status_code, raw)
                return _result(url=url, status=resp.status_code, latency_ms=latency_ms, error=error, hint=hint)
            try:
                found = flavor.inspect(raw, len(texts), resp.headers)
            except InvalidResponse as exc:
                return _result(url=url, status=resp.status_code, latency_ms=latency_ms,
                               error=f"wrong answer from {url}: {exc}",
                               hint=f"is this a {flavor.name}-flavor embedding endpoint? check the flavor and URL")
            if first is None:
                first = _result(ok=True, url=url, status=resp.status_code, latency_ms=latency_ms, **found)
    finally:
        if own:
            client.close()
    return first


def probe(target: dict, *, dimensions: int | None = None, encoding: str = "float", timeout_s: float = 10) -> dict:
    """One request to the target: what it serves, or a message and hint saying why it does not work.

    Returns {"ok", "served_model", "vector_length", "prompt_tokens", "latency_ms", "status",
    "error", "hint", "url"}."""
    try:
        return probe_texts(target, [PROBE_TEXT], dimensions=dimensions, encoding=encoding, timeout_s=timeout_s)
    except ConfigError as exc:
        return _result(error=str(exc), hint="fix the target's settings")
