"""Errors the engine raises, and the outcome classes it sorts every request into."""

OK = "ok"
HTTP_4XX = "http_4xx"
HTTP_429 = "http_429"
HTTP_5XX = "http_5xx"
TIMEOUT = "timeout"
CONNECT_ERROR = "connect_error"
INVALID_RESPONSE = "invalid_response"

# Failure classes in the order the result document lists them.
ERROR_CLASSES = (HTTP_4XX, HTTP_429, HTTP_5XX, TIMEOUT, CONNECT_ERROR, INVALID_RESPONSE)
OUTCOMES = (OK, *ERROR_CLASSES)


class SweepError(Exception):
    """A fatal problem a person can act on (the message says what and, where possible, how to fix it)."""


class ConfigError(SweepError):
    """The target or plan is not usable as given (bad value, unsupported combination)."""


class InvalidResponse(Exception):
    """A response that arrived but is not a correct embedding answer; the message says what is wrong."""


def classify_status(status: int) -> str:
    """Outcome class of an HTTP status code (2xx is `ok`; the body is validated separately)."""
    if 200 <= status < 300:
        return OK
    if status == 429:
        return HTTP_429
    if status >= 500:
        return HTTP_5XX
    return HTTP_4XX
