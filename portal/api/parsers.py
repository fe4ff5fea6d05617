"""JSON request bodies with a size limit and error messages a person can act on."""
import codecs
import json
import math

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# Deepest nesting of arrays and objects a body may have: a result document needs about 6, and every
# reader after the parser (validation, storage) walks the value recursively.
MAX_JSON_DEPTH = 64
TOO_DEEP = f"The JSON in the request body is nested deeper than {MAX_JSON_DEPTH} levels."


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON; send null or a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:30]} is too large")
    return value


def read_limited(stream, max_bytes: int) -> bytes:
    """Read a request body, refusing one over max_bytes without reading far past the limit."""
    body = stream.read(max_bytes + 1) if stream is not None else b""
    if len(body) > max_bytes:
        raise ParseError({"body": [f"The request body is larger than the limit of {max_bytes:,} bytes."]})
    return body


def parse_json_body(body: bytes, encoding: str = "utf-8"):
    """Decode a JSON body; NaN and Infinity are refused, as JSON itself does."""
    try:
        text = codecs.decode(body, encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise ParseError({"body": [f"The request body is not valid {encoding} text: {exc}"]}) from None
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except ValueError as exc:
        raise ParseError({"body": [f"Malformed JSON in the request body: {exc}"]}) from None
    except RecursionError:
        # Thousands of nested brackets exhaust the decoder's stack: a bad body, not a server fault.
        raise ParseError({"body": [TOO_DEEP]}) from None
    if _deeper_than(value, MAX_JSON_DEPTH):
        raise ParseError({"body": [TOO_DEEP]})
    return value


def _deeper_than(value, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


class LimitedJSONParser(BaseParser):
    """application/json, at most EMBPERF_API_MAX_BODY_BYTES (1 MiB unless set)."""

    media_type = "application/json"

    def max_bytes(self, parser_context) -> int:
        view = (parser_context or {}).get("view")
        limit = getattr(view, "max_body_bytes", None)
        return limit or getattr(settings, "EMBPERF_API_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)

    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        request = parser_context.get("request")
        limit = self.max_bytes(parser_context)
        if request is not None:
            try:
                declared = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                declared = 0
            if declared > limit:
                raise ParseError(
                    {"body": [f"The request body ({declared:,} bytes) is larger than the limit of {limit:,} bytes."]}
                )
        return parse_json_body(read_limited(stream, limit), encoding)
