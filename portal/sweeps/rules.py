"""The rules a target and a plan must meet to be saved, in the models' field names.

The pages' forms read values from text boxes, the API's serializers from JSON; both hand them here,
so the browser and the API refuse the same values with the same messages. A plan's values are the plan
rule's (benchmarks.plan, with this installation's limits, through portal.sweeps.bounds).
"""
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError

from portal.sweeps.bounds import checked_plan, target_field_errors
from portal.sweeps.models import CONFIG_KEY_RE, Plan, QueueGrant, Target, new_servers
from portal.sweeps.outbound import outbound_policy, validate_outbound_url
from portal.sweeps.services import queue_refusal
from portal.sweeps.tokenizers import tokenizer_error

QUEUE_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")

# The longest key and value of a launch or server configuration.
CONFIG_KEY_MAX = 100
CONFIG_VALUE_MAX = 1000

NO_BASE_URL = "Enter at least one URL, e.g. http://127.0.0.1:30000/v1"

# Engine plan field -> Plan model field, for the fields the plan rule checks.
PLAN_SPEC_FIELDS = {
    "mode": "mode", "levels": "levels", "arrival": "arrival", "max_in_flight": "max_in_flight",
    "warmup_s": "warmup_s", "duration_s": "duration_s", "tokens": "tokens", "batch": "batch",
    "dimensions": "dimensions", "encoding": "encoding", "timeout_s": "timeout_s",
    "abort_error_rate": "abort_error_rate", "abort_window_s": "abort_window_s",
    "input": "input_mode", "processes": "processes", "keep_samples": "keep_samples", "thresholds": "thresholds",
    "shape_field": "shape_field", "shape_values": "shape_values",
    **{name: name for name in (*Plan.SLO_FIELDS, *Plan.SEARCH_FIELDS, *Plan.LENGTH_FIELDS)},
}


def parse_url_list(lines: Iterable[str]) -> list[str]:
    """http(s) URLs, one per item (blank items skipped) -> the URLs without trailing slashes.

    Raises ValidationError naming the first URL that is not one."""
    urls: list[str] = []
    for line in lines:
        url = str(line).strip()
        if not url:
            continue
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValidationError(
                f"“{url}” has no http:// or https:// scheme. Write the full URL, e.g. http://{url}"
                if "://" not in url
                else f"“{url}” must start with http:// or https://."
            )
        if not parts.hostname:
            raise ValidationError(f"“{url}” has no host name.")
        try:
            parts.port  # noqa: B018  (raises on a port that is not a number)
        except ValueError:
            raise ValidationError(f"“{url}” has a port that is not a number.") from None
        url = url.rstrip("/")
        if url in urls:
            raise ValidationError(f"“{url}” is listed twice.")
        urls.append(url)
    return urls


def config_key_error(key: str) -> str | None:
    """Why `key` cannot be a key of a launch or server configuration; None when it can."""
    if not CONFIG_KEY_RE.match(key) or len(key) > CONFIG_KEY_MAX:
        return (f"“{key}” is not a key; keys use letters, digits and - _ . / : only "
                f"(up to {CONFIG_KEY_MAX} characters).")
    return None


def clean_outbound_urls(urls: list[str]) -> list[str]:
    """The URLs, if the outbound policy (docs/security.md) lets the workers connect to each of them: the
    same check the worker applies when it connects. Raises ValidationError with every refusal."""
    policy = outbound_policy()
    errors = []
    for url in urls or []:
        try:
            validate_outbound_url(url, policy)
        except ValidationError as exc:
            errors.extend(exc.messages)
    if errors:
        raise ValidationError(errors)
    return urls or []


def clean_gpu_indices(raw: str) -> str:
    """'0, 1' -> '0,1'. Raises ValidationError when the indices are not distinct whole numbers."""
    raw = (raw or "").replace(" ", "")
    if not raw:
        return ""
    parts = raw.split(",")
    if not all(p.isascii() and p.isdigit() for p in parts):
        raise ValidationError("Write GPU indices as whole numbers separated by commas, e.g. 0,1.")
    if len(set(parts)) != len(parts):
        raise ValidationError("A GPU index is listed twice.")
    return ",".join(str(int(p)) for p in parts)


def clean_queue(raw: str) -> str:
    """A worker queue name, stripped. Raises ValidationError when it is not one."""
    queue = (raw or "").strip()
    if not QUEUE_RE.match(queue):
        raise ValidationError("Queue names use letters, digits, - _ and . only, e.g. sweeps or gpu-host-1.")
    return queue


# Target field -> the check that reads (and normalizes) its value on its own.
TARGET_FIELD_RULES = {
    "base_urls": clean_outbound_urls,
    "metrics_urls": clean_outbound_urls,
    "gpu_indices": clean_gpu_indices,
    "queue": clean_queue,
}


def clean_target_fields(values: dict) -> dict[str, list[str]]:
    """Apply TARGET_FIELD_RULES to `values` in place; a field that fails leaves `values`.

    Returns {field: [messages]}."""
    errors: dict[str, list[str]] = {}
    for name, rule in TARGET_FIELD_RULES.items():
        if name not in values:
            continue
        try:
            values[name] = rule(values[name])
        except ValidationError as exc:
            errors[name] = list(exc.messages)
            del values[name]
    return errors


def key_binding_error(stored: Target, base_urls: list[str]) -> str | None:
    """Why a target's stored API key may not be kept with these base URLs; None when it may.

    A stored key belongs to the servers it was given for: pointing the target at a new server must not
    send it there unseen, so a new server means typing the key again (or removing it)."""
    added = new_servers(stored.base_urls, base_urls)
    if not added:
        return None
    return (f"The base URLs now include another server ({', '.join(added)}): type the API key again, "
            "or remove it. A stored key is only sent to the servers it was entered for.")


def target_errors(values: Mapping, *, team, stored: Target | None = None,
                  keeps_stored_key: bool = False) -> dict[str, list[str]]:
    """{field: [messages]} for the rules that join a target's fields: the queue grant of its team, how many
    URLs it lists, Prometheus telemetry needing a metrics URL, the stored key's binding to its servers,
    and the tokenizer rule (portal.sweeps.tokenizers: a model id or a file in the operator's folder).

    `values` holds the fields that read cleanly (a field that did not has its own message); `stored` is the
    target as saved (None when creating) and `keeps_stored_key` whether this save keeps its API key."""
    errors: dict[str, list[str]] = {}
    queue = values.get("queue")
    if team is not None and queue and not QueueGrant.objects.allows(team, queue):
        errors.setdefault("queue", []).append(queue_refusal(team, queue))
    lists = {name: values[name] for name in ("base_urls", "metrics_urls") if name in values}
    for field, messages in target_field_errors(lists).items():
        if field in lists:
            errors.setdefault(field, []).extend(messages)
    if values.get("gpu_source") == Target.GpuSource.PROMETHEUS and not values.get("metrics_urls"):
        errors.setdefault("metrics_urls", []).append("GPU telemetry from Prometheus needs at least one metrics URL.")
    tokenizer = tokenizer_error(values.get("tokenizer") or "")
    if tokenizer:
        errors.setdefault("tokenizer", []).append(tokenizer)
    if stored is not None and stored.api_key and keeps_stored_key and "base_urls" in values:
        message = key_binding_error(stored, values["base_urls"])
        if message:
            errors.setdefault("api_key", []).append(message)
    return errors


def plan_spec(values: Mapping) -> dict:
    """The engine plan spec of a plan's model-field values (those present)."""
    spec = {engine: values[field] for engine, field in PLAN_SPEC_FIELDS.items() if field in values}
    if "shape_field" in spec:
        spec["shape_field"] = spec["shape_field"] or None  # "" on the page: no shape axis
    if "shape_values" in spec and spec["shape_values"] in ("", []):
        spec["shape_values"] = None
    if values.get("input_mode") == Plan.Input.CORPUS:
        spec["corpus"] = [line for line in (values.get("corpus_text") or "").splitlines() if line.strip()]
    return spec


def plan_errors(values: dict) -> dict[str, list[str]]:
    """{Plan model field: [messages]}: the plan rule on a plan's model-field values. Thresholds the rule
    accepts are stored as it reads them ("p99_ms <= 500" becomes {"figure", "op", "limit", "levels"});
    none given ([] or null) is the default."""
    if "thresholds" in values and not values["thresholds"]:
        values["thresholds"] = None
    checked, errors = checked_plan(plan_spec(values))
    if "thresholds" not in errors and values.get("thresholds") is not None:
        values["thresholds"] = checked["thresholds"]
    if "shape_values" in values and not errors:
        # Stored as the rule reads them (numbers as numbers), none without a shape field.
        values["shape_values"] = checked["shape_values"]
        values["shape_field"] = checked["shape_field"] or ""
    return errors
