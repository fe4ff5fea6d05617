"""Send a result document to an embperf portal (`POST /api/v1/ingest/`), for `run --push URL --token T`.

Standard library only, like the rest of the engine it needs no Django. Redirects are never followed
(the token must reach the portal and nobody else), and a token sent over plain http:// to another
host is warned about. The portal answers 201 with
the new run's id and URLs, 400 with the fields it refused, 409 when the same run (by run.uuid) is
already there.
"""
import argparse
import ipaddress
import json
import os
import urllib.error
import urllib.parse
import urllib.request

from benchmarks import __version__

INGEST_PATH = "/api/v1/ingest/"
# Errors printed per refused document: enough to fix it, not a wall of text.
MAX_FIELD_ERRORS = 10


class PushError(Exception):
    """The document could not be added; the message says why in plain words."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # urllib would follow a 301/302/303 with the same headers, so the token would go to wherever the
    # answer points, another origin included. A redirect is reported instead (see push_document).
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def plain_http_warning(url: str) -> str | None:
    """A warning when the token would cross the network unencrypted (http:// to a host not on loopback)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        return None
    host = (parts.hostname or "").lower()
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (f"warning: --push sends the API token unencrypted to {host} over plain http://; "
            "use the portal's https:// URL")


def ingest_url(url: str, team: int | None = None) -> str:
    """The ingest endpoint of a portal given by its base URL (or by the endpoint itself)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PushError(f"--push needs the portal's http(s) URL, e.g. http://127.0.0.1:8000, not {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(INGEST_PATH.rstrip("/")):
        path += INGEST_PATH.rstrip("/")
    query = urllib.parse.urlencode({"team": team}) if team is not None else ""
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path + "/", query, ""))


def _refusal(status: int, body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
    if isinstance(data, dict) and set(data) == {"detail"}:
        return f"HTTP {status}: {data['detail']}"
    if isinstance(data, dict):
        lines = [f"{field}: {' '.join(map(str, msgs if isinstance(msgs, list) else [msgs]))}"
                 for field, msgs in list(data.items())[:MAX_FIELD_ERRORS]]
        return f"HTTP {status}, the portal refused the document:\n  " + "\n  ".join(lines)
    return f"HTTP {status}: {data}"


def push_document(url: str, token: str, document: dict, *, team: int | None = None, timeout_s: float = 60.0) -> dict:
    """POST the document; returns the portal's answer ({"id", "url", "web_url", "status"}, URLs absolute).

    A run the portal already holds (same run.uuid) is not an error: the answer has "existing": True.
    Raises PushError for anything else.
    """
    if not token:
        raise PushError("--push needs an API token: --token T or $EMBPERF_TOKEN (create one under API tokens)")
    endpoint = ingest_url(url, team)
    request = urllib.request.Request(
        endpoint,
        data=json.dumps(document).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json",
                 "Authorization": f"Bearer {token}", "User-Agent": f"embperf/{__version__}"},
    )
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        if 300 <= exc.code < 400:
            location = urllib.parse.urljoin(endpoint, exc.headers.get("Location") or "")
            raise PushError(f"the portal at {endpoint} redirects (HTTP {exc.code}) to {location[:200]}; the token "
                            "is never sent after a redirect: give --push the portal's URL as it redirects "
                            "(e.g. https://)") from None
        if exc.code == 409:
            answer = {**json.loads(body), "existing": True}
        elif exc.code == 401:
            raise PushError(f"the portal refused the token: {_refusal(exc.code, body)}") from None
        else:
            raise PushError(_refusal(exc.code, body)) from None
    except urllib.error.URLError as exc:
        raise PushError(f"could not reach the portal at {endpoint}: {exc.reason}") from None
    except (TimeoutError, ValueError) as exc:
        raise PushError(f"no usable answer from {endpoint}: {exc}") from None
    for key in ("url", "web_url"):
        if answer.get(key):
            answer[key] = urllib.parse.urljoin(endpoint, answer[key])
    return answer


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    """The `run` options that send the result to a portal."""
    group = parser.add_argument_group("portal")
    group.add_argument("--push", metavar="URL", help="add the result to this embperf portal's history, "
                                                     "e.g. http://127.0.0.1:8000")
    group.add_argument("--token", default=os.environ.get("EMBPERF_TOKEN"),
                       help="API token for --push (default: $EMBPERF_TOKEN)")
    group.add_argument("--team", type=int, help="team id for --push, when the token's user has several teams")
    group.add_argument("--target-name", help="name of the target in the portal; pushed runs land beside the "
                                             "portal's runs of the target and plan of these names")
    group.add_argument("--plan-name", help="name of the plan in the portal")


def apply_names(args: argparse.Namespace, target: dict, plan: dict) -> None:
    """Name the target and plan as the portal knows them (--target-name, --plan-name)."""
    if getattr(args, "target_name", None):
        target["name"] = args.target_name
    if getattr(args, "plan_name", None):
        plan["name"] = args.plan_name


def push_from_cli(args: argparse.Namespace, document: dict, out, err) -> bool:
    """Push after a run when --push was given; prints where the run is. False when the push failed."""
    if not getattr(args, "push", None):
        return True
    warning = plain_http_warning(args.push)
    if warning:
        err.print(f"embperf: {warning}", markup=False, highlight=False)
    try:
        answer = push_document(args.push, args.token, document, team=args.team)
    except PushError as exc:
        err.print(f"embperf: push failed: {exc}", markup=False, highlight=False)
        return False
    where = answer.get("web_url") or answer.get("url")
    if answer.get("existing"):
        out.print(f"already in the portal as run {answer.get('id')}: {where}", markup=False, highlight=False)
    else:
        out.print(f"pushed to the portal as run {answer['id']}: {where}", markup=False, highlight=False)
        if answer.get("plan_note"):
            out.print(str(answer["plan_note"]), markup=False, highlight=False)
    return True
