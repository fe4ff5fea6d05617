"""API flavors: how a request is addressed and encoded, and how its answer is read and checked.

Each flavor sends only the fields its servers accept (strict servers reject unknown ones) and
validates every answer: one vector per input text, each of the expected length, all finite.
A wrong answer raises `InvalidResponse` with a message that says what was wrong.
"""
import abc
import binascii
import math
import re
from collections.abc import Mapping

import numpy as np
import orjson

from benchmarks.answers import describe_body
from benchmarks.errors import ConfigError, InvalidResponse

ENCODINGS = ("float", "base64")

# How far from 1 a vector's norm may be where unit vectors are expected: float32 rounding of a unit
# vector of 16,384 components stays below 1e-5, a float16 model's output below 1e-3.
NORM_TOLERANCE = 1e-3


_NON_FINITE_LITERAL = re.compile(r"-?(NaN|Infinity)")


def _loads(raw: bytes):
    """Parse JSON with orjson (which bounds nesting at 1,024 levels); on failure say why in plain words."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidResponse(_json_problem(raw, exc)) from None


def _json_problem(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    reason, pos = exc.msg, exc.pos
    if "depth limit" in reason:
        return "response is nested more than 1,024 levels deep (not an embedding answer)"
    if "infinity when parsed" in reason:
        return f"response holds a number too large for a 64-bit float (such as 1e400) at position {pos}"
    if "UTF-8" in reason:
        return "response is not valid UTF-8 text"
    around = exc.doc[max(0, pos - 1): pos + 9] if isinstance(exc.doc, str) else ""
    if _NON_FINITE_LITERAL.search(around):
        return "response holds non-finite numbers (NaN or Infinity literals)"
    # The bytes themselves are never quoted: they may be any page or banner the URL leads to.
    return f"response is not JSON ({reason}, at position {pos})"


def _check_float_vector(vec, dims: int, i: int) -> None:
    if type(vec) is not list:
        raise InvalidResponse(f"embedding {i} is {type(vec).__name__}, expected a list of numbers")
    if len(vec) != dims:
        raise InvalidResponse(f"embedding {i} has {len(vec)} values, expected {dims}")
    try:
        # One C-level pass: a NaN or infinity anywhere makes the sum non-finite.
        total = sum(vec)
    except TypeError:
        if any(x is None for x in vec):
            # Standard JSON has no NaN; servers that produce one often write null instead.
            raise InvalidResponse(f"embedding {i} holds null (a NaN or infinity written as null)") from None
        bad = next((x for x in vec if type(x) not in (float, int, bool)), None)
        raise InvalidResponse(f"embedding {i} holds a value that is not a number: {type(bad).__name__} "
                              f"{_short(bad)}") from None
    if type(total) is not float:
        # No float at all: integers, or JSON true/false (which Python sums as 1 and 0). Checking every
        # value for bool would cost as much as parsing; a vector without a single float is rare enough.
        if any(type(x) is bool for x in vec):
            raise InvalidResponse(f"embedding {i} holds true/false where numbers should be")
    elif not math.isfinite(total) and not all(math.isfinite(x) for x in vec):
        raise InvalidResponse(f"embedding {i} holds a non-finite value")


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_base64_vector(text, dims: int, i: int) -> None:
    if type(text) is not str:
        raise InvalidResponse(f"embedding {i} is {type(text).__name__}, expected a base64 string")
    try:
        raw = binascii.a2b_base64(text)
    except binascii.Error:
        raise InvalidResponse(f"embedding {i} is not valid base64") from None
    if len(raw) != 4 * dims:
        raise InvalidResponse(f"embedding {i} decodes to {len(raw) // 4} float32 values, expected {dims}")
    if not np.isfinite(np.frombuffer(raw, dtype="<f4")).all():
        raise InvalidResponse(f"embedding {i} holds a non-finite value")


def _vector_length(vec, encoding: str) -> int:
    if encoding == "base64" and type(vec) is str:
        try:
            return len(binascii.a2b_base64(vec)) // 4
        except binascii.Error:
            raise InvalidResponse("embedding 0 is not valid base64") from None
    if type(vec) is not list:
        raise InvalidResponse(f"embedding 0 is {type(vec).__name__}, expected a list of numbers")
    return len(vec)


def vector_norm(vec, encoding: str) -> float:
    """The Euclidean norm of one checked vector (a list of numbers, or base64 of little-endian float32)."""
    if encoding == "base64" and type(vec) is str:
        values = np.frombuffer(binascii.a2b_base64(vec), dtype="<f4")
    else:
        values = np.asarray(vec, dtype=np.float64)
    return float(np.linalg.norm(values.astype(np.float64)))


def header_tokens(headers: Mapping | None) -> int | None:
    """The prompt tokens of TEI's `x-compute-tokens` response header, or None."""
    value = headers.get("x-compute-tokens") if headers is not None else None
    try:
        n = int(value) if value is not None else None
    except ValueError:  # also a number of more than 4,300 digits
        return None
    return n if n is None or n >= 0 else None


class Flavor(abc.ABC):
    """Base of the three flavors; subclasses fill in the wire format."""

    name = ""
    path = ""
    supports_base64 = False

    def __init__(self, model: str, *, dimensions: int | None = None, encoding: str = "float") -> None:
        if encoding not in ENCODINGS:
            raise ConfigError(f"encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
        if encoding == "base64" and not self.supports_base64:
            raise ConfigError(f"the {self.name} flavor has no base64 encoding; use --encoding float")
        self.model = model
        self.dimensions = dimensions
        self.encoding = encoding
        self._check = _check_base64_vector if encoding == "base64" else _check_float_vector
        # Set when the server's full-length vectors are unit vectors (the probe found so) and fewer
        # dimensions are asked for: every truncated vector must then be a unit vector too.
        self.unit_norm = False

    def url(self, base_url: str) -> str:
        """The full request URL for one base URL (a replica)."""
        return base_url.rstrip("/") + self.path

    @abc.abstractmethod
    def body(self, texts: list[str]) -> bytes:
        """The encoded JSON request body for these texts."""

    @abc.abstractmethod
    def vectors(self, doc) -> list:
        """The list of vectors in a parsed answer (raises InvalidResponse when the shape is wrong)."""

    @abc.abstractmethod
    def tokens(self, doc, headers: Mapping | None) -> int | None:
        """Prompt tokens the server reports for this request, or None when it reports none."""

    def served_model(self, doc) -> str | None:
        """The model name the server says it used, when it says."""
        model = doc.get("model") if isinstance(doc, dict) else None
        return model if isinstance(model, str) else None

    def validate(self, raw: bytes, n_texts: int, dims: int, headers: Mapping | None = None) -> int | None:
        """Check one answer completely; return the reported prompt tokens (or None)."""
        doc = _loads(raw)
        vecs = self.vectors(doc)
        if len(vecs) != n_texts:
            raise InvalidResponse(f"{len(vecs)} embeddings for {n_texts} input texts")
        if self.dimensions and vecs:
            length = _vector_length(vecs[0], self.encoding)
            if length > self.dimensions:
                raise InvalidResponse(f"embedding 0 has {length} values where {self.dimensions} dimensions were "
                                      "asked for: the server ignores 'dimensions'")
        check = self._check
        for i, vec in enumerate(vecs):
            check(vec, dims, i)
        if self.unit_norm and self.dimensions:
            for i, vec in enumerate(vecs):
                norm = vector_norm(vec, self.encoding)
                if abs(norm - 1) > NORM_TOLERANCE:
                    raise InvalidResponse(
                        f"embedding {i} has norm {norm:.4f}, not 1 within {NORM_TOLERANCE:g}: the server cuts its "
                        f"unit vectors to {self.dimensions} dimensions without re-normalising them")
        return self.tokens(doc, headers)

    def inspect(self, raw: bytes, n_texts: int, headers: Mapping | None = None) -> dict:
        """Read an answer without knowing the vector length yet (the probe): validate it against
        the length of its first vector (or the requested dimensions) and report what it found."""
        doc = _loads(raw)
        vecs = self.vectors(doc)
        if not vecs:
            raise InvalidResponse("the answer holds no embeddings")
        length = _vector_length(vecs[0], self.encoding)
        if length == 0:
            raise InvalidResponse("embedding 0 is empty")
        dims = self.dimensions or length
        self.validate(raw, n_texts, dims, headers)
        return {
            "served_model": self.served_model(doc),
            "vector_length": length,
            "norm": vector_norm(vecs[0], self.encoding),
            "prompt_tokens": self.tokens(doc, headers),
        }


class OpenAIFlavor(Flavor):
    """OpenAI-compatible `POST {base_url}/embeddings` (SGLang, vLLM, Infinity, TEI's OpenAI route)."""

    name = "openai"
    path = "/embeddings"
    supports_base64 = True

    def body(self, texts: list[str]) -> bytes:
        payload = {"model": self.model, "input": texts}
        if self.dimensions:
            payload["dimensions"] = self.dimensions
        if self.encoding == "base64":
            # Only sent when asked for: some servers reject encoding_format altogether.
            payload["encoding_format"] = "base64"
        return orjson.dumps(payload)

    def vectors(self, doc) -> list:
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):
            raise InvalidResponse("answer has no 'data' list (expected an OpenAI embeddings response)")
        try:
            return [item["embedding"] for item in data]
        except (TypeError, KeyError):
            raise InvalidResponse("an item of 'data' has no 'embedding'") from None

    def tokens(self, doc, headers) -> int | None:
        usage = doc.get("usage")
        if isinstance(usage, dict):
            n = usage.get("prompt_tokens")
            if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
                return n
        # No usage in the body: some servers (TEI's OpenAI route behind proxies) count in a header.
        return header_tokens(headers)


class TEIFlavor(Flavor):
    """Text Embeddings Inference's native `POST /embed`: `{"inputs": [...]}` → `[[...], ...]`."""

    name = "tei"
    path = "/embed"

    def body(self, texts: list[str]) -> bytes:
        payload = {"inputs": texts}
        if self.dimensions:
            payload["dimensions"] = self.dimensions
        return orjson.dumps(payload)

    def vectors(self, doc) -> list:
        if not isinstance(doc, list):
            raise InvalidResponse("answer is not a list of vectors (expected TEI's /embed response)")
        return doc

    def tokens(self, doc, headers) -> int | None:
        # TEI reports usage only in a response header.
        return header_tokens(headers)

    def served_model(self, doc) -> str | None:
        return None


class OllamaFlavor(Flavor):
    """Ollama's `POST /api/embed`: `{"model", "input": [...]}` → `{"embeddings": [...], "prompt_eval_count"}`."""

    name = "ollama"
    path = "/api/embed"

    def body(self, texts: list[str]) -> bytes:
        payload = {"model": self.model, "input": texts}
        if self.dimensions:
            payload["dimensions"] = self.dimensions
        return orjson.dumps(payload)

    def vectors(self, doc) -> list:
        vecs = doc.get("embeddings") if isinstance(doc, dict) else None
        if not isinstance(vecs, list):
            raise InvalidResponse("answer has no 'embeddings' list (expected Ollama's /api/embed response)")
        return vecs

    def tokens(self, doc, headers) -> int | None:
        n = doc.get("prompt_eval_count")
        return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None


FLAVORS = {cls.name: cls for cls in (OpenAIFlavor, TEIFlavor, OllamaFlavor)}


def make_flavor(name: str, model: str, *, dimensions: int | None = None, encoding: str = "float") -> Flavor:
    """The flavor object for a target's flavor name."""
    try:
        cls = FLAVORS[name]
    except KeyError:
        raise ConfigError(f"unknown flavor {name!r}; choose one of {', '.join(FLAVORS)}") from None
    return cls(model, dimensions=dimensions, encoding=encoding)


def request_headers(api_key: str | None) -> dict:
    """Headers sent with every request: JSON body, optional Bearer key."""
    # Uncompressed answers only: the size cap then holds for what is parsed (benchmarks/answers.py).
    headers = {"Content-Type": "application/json", "Accept": "application/json", "Accept-Encoding": "identity"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def error_text(raw: bytes, content_type: str | None = None, limit: int = 200) -> str:
    """The server's own error message from a JSON error body, at most `limit` characters.

    Anything else (an HTML page, plain text, JSON without an error message) is described by its
    content type and size, never quoted: the URL may lead to an internal page rather than to an
    embedding server, and its text is nobody's business here."""
    text = None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        for key in ("error", "detail", "message", "msg"):
            value = doc.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value.get("msg") or value
            if value:
                try:
                    text = value if isinstance(value, str) else orjson.dumps(value).decode()
                except orjson.JSONEncodeError:  # nested past what orjson writes back (255 levels)
                    text = "(an error object nested too deeply to show)"
                break
    if text is None:
        return f"no error message ({describe_body(raw, content_type)})"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
