"""Ingest: add a result document produced elsewhere (the CLI's --json output) to a team's history.

The document is checked against benchmarks/result-schema.json and a few rules JSON Schema cannot
say; every problem is reported with the path of the field (`levels[2].latency_ms.p99`). Nothing is
saved unless the whole document is accepted. The target and plan are matched by name within the
team (and created from the document when missing, `Target/Plan.from_spec`), so ingested runs sit
in history beside runs started in the browser. A plan of the document's name whose settings differ
is never used: the run goes to a plan named after what differs, "smoke (levels 16-64, 3 s)", and
the answer's `plan_note` says which. The accepted document is recorded by
`portal.sweeps.documents.record_document`, as the worker records the runs it measures.
"""
import json
import uuid
from datetime import UTC, datetime
from functools import cache

import jsonschema
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from benchmarks import stats
from benchmarks.document import SCHEMA_PATH, public_target
from portal.accounts.models import Team
from portal.sweeps.bounds import plan_document_errors, target_field_errors
from portal.sweeps.documents import record_document
from portal.sweeps.models import Plan, Run, Target
from portal.sweeps.outbound import outbound_policy, validate_outbound_url
from portal.sweeps.rules import parse_url_list
from portal.sweeps.snapshots import plan_settings

MAX_ERRORS = 20


class IngestError(Exception):
    """The document was refused; `errors` maps field paths to messages."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


class AlreadyIngested(Exception):
    def __init__(self, run: Run):
        super().__init__(f"run.uuid: this run is already in history as run {run.pk}")
        self.run = run


@cache
def result_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


@cache
def _validator() -> jsonschema.protocols.Validator:
    schema = result_schema()
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def _path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _join(base: str, key: str) -> str:
    return key if base == "body" else f"{base}.{key}"


def _describe(error: jsonschema.ValidationError) -> list[tuple[str, str]]:
    """(field path, message) pairs for one schema error, naming the offending field itself."""
    where = _path(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set((error.schema.get("properties") or {}).keys())
        return [(_join(where, k), "Unknown field.") for k in error.instance if k not in known]
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return [(_join(where, missing), "This field is required.")]
    if error.validator == "type":
        wanted = error.validator_value
        wanted = " or ".join(wanted) if isinstance(wanted, list) else wanted
        return [(where, f"Expected {wanted}, got {type(error.instance).__name__} {_short(error.instance)}.")]
    if error.validator == "enum":
        choices = ", ".join(json.dumps(v) for v in error.validator_value)
        return [(where, f"{_short(error.instance)} is not one of {choices}.")]
    if error.validator == "const":
        return [(where, f"Must be {json.dumps(error.validator_value)}; got {_short(error.instance)}.")]
    return [(where, error.message)]


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _find_nul(value, path: str):
    # PostgreSQL cannot store NUL in text or JSON; refuse it with its place instead of failing later.
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            found = _find_nul(k, path) or _find_nul(v, _join(path, str(k)))
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _find_nul(v, f"{path}[{i}]")
            if found:
                return found
    return None


def _parse_time(value, field: str, errors: dict):
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        errors.setdefault(field, []).append(f"{_short(value)} is not an ISO 8601 date-time.")
        return None
    return parsed.replace(tzinfo=UTC) if timezone.is_naive(parsed) else parsed


# Level figures that history, comparison and charts compute with, and the largest value each may hold:
# far above anything a server serves, low enough that sums, differences and squares stay finite.
FIGURE_MAX = 1e12
LEVEL_FIGURES = ("duration_s", "qps", "texts_per_s", "tokens_per_s", "error_rate")


def _check_histogram(value, field: str, errors: dict) -> None:
    if not value:
        return
    try:
        stats.decode(value)
    except Exception:  # the decoder raises whatever its input makes it (binascii, zlib, struct, ...)
        errors.setdefault(field, []).append(
            f"{_short(value)} is not an encoded HDR histogram (base64 of the compressed V2 format, "
            "as the engine writes it)."
        )


def _check_figures(level: dict, where: str, errors: dict) -> None:
    figures = [(key, level.get(key)) for key in LEVEL_FIGURES]
    figures += [(f"latency_ms.{key}", value) for key, value in (level.get("latency_ms") or {}).items()]
    figures += [(f"service_ms.{key}", value) for key, value in (level.get("service_ms") or {}).items()]
    for key, value in figures:
        if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > FIGURE_MAX:
            errors.setdefault(f"{where}.{key}", []).append(
                f"{_short(value)} is not a plausible figure (at most {FIGURE_MAX:g})."
            )


def validate_document(doc) -> dict:
    """Check a parsed document; returns the parsed times. Raises IngestError naming each bad field."""
    errors: dict[str, list[str]] = {}
    if not isinstance(doc, dict):
        raise IngestError({"body": [f"Expected a JSON object (the result document), got {type(doc).__name__}."]})
    schema_errors = sorted(_validator().iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    for error in schema_errors[:MAX_ERRORS]:
        for field, message in _describe(error):
            errors.setdefault(field, []).append(message)
    if errors:
        raise IngestError(errors)
    nul = _find_nul(doc, "body")
    if nul:
        raise IngestError({nul: ["Text may not contain the NUL character (\\u0000)."]})
    times = {
        "started": _parse_time(doc["run"].get("started_at"), "run.started_at", errors),
        "finished": _parse_time(doc["run"].get("finished_at"), "run.finished_at", errors),
    }
    if doc["run"].get("uuid") is not None:
        try:
            uuid.UUID(doc["run"]["uuid"])
        except ValueError:
            errors.setdefault("run.uuid", []).append(f"{_short(doc['run']['uuid'])} is not a UUID.")
    _check_target_urls(doc["target"], errors)
    # The plan rule, with this installation's limits: a plan that could not be started here is refused.
    for field, messages in plan_document_errors(doc["plan"]).items():
        errors.setdefault(f"plan.{field}", []).extend(messages)
    for field, messages in target_field_errors(doc["target"]).items():
        errors.setdefault(f"target.{field}", []).extend(messages)
    load_key = "rate" if doc["plan"]["mode"] == "open" else "concurrency"
    seen: set[int] = set()
    for i, level in enumerate(doc["levels"]):
        if level["index"] in seen:
            errors.setdefault(f"levels[{i}].index", []).append(f"Index {level['index']} appears twice.")
        seen.add(level["index"])
        # A capacity search's synchronous level is closed loop, whatever the plan's mode (docs/capacity.md).
        synchronous = (level.get("capacity_step") or {}).get("phase") == "synchronous" and level.get("concurrency")
        if level.get(load_key) is None and not synchronous:
            errors.setdefault(f"levels[{i}].{load_key}", []).append(
                f"Required: a {doc['plan']['mode']}-loop plan's levels give their {load_key}."
            )
        _parse_time(level.get("started_at"), f"levels[{i}].started_at", errors)
        _check_histogram(level.get("histogram"), f"levels[{i}].histogram", errors)
        _check_figures(level, f"levels[{i}]", errors)
    if errors:
        raise IngestError(errors)
    return times


def _check_target_urls(target: dict, errors: dict) -> None:
    """Ingested URLs pass what the target form checks: http(s) with a host, and the outbound policy."""
    policy = outbound_policy()
    for key in ("base_urls", "metrics_urls"):
        urls = target.get(key) or []
        for i, url in enumerate(urls if isinstance(urls, list) else []):
            try:
                if not isinstance(url, str) or len(url.split()) != 1:
                    raise ValidationError(f"{_short(url)} is not one URL (no spaces or line breaks).")
                parse_url_list([url])
                validate_outbound_url(url, policy)
            except ValidationError as exc:
                errors.setdefault(f"target.{key}[{i}]", []).extend(exc.messages)


def _plan_name(plan: dict) -> str:
    if plan.get("name"):
        return plan["name"]
    levels = ",".join(f"{v:g}" for v in plan["levels"])
    return f"{plan['mode']} {levels}"[:100]


def _match_target(team, spec: dict) -> Target:
    target = Target.objects.filter(team=team, name=spec["name"]).order_by("id").first()
    if target is not None:
        return target
    # The worker queue and the tokenizer name things where the sweep ran (a queue of that portal, a file on
    # that host); the run's snapshot keeps them, the new target takes this portal's defaults.
    spec = {key: value for key, value in public_target(spec).items() if key not in ("queue", "tokenizer")}
    target = Target.from_spec(spec, team=team)
    target.save()
    return target


def _plan_settings(plan: Plan) -> dict:
    """A plan's settings without its name: what must agree for two sweeps to share one history (the
    default thresholds agree with none named)."""
    return {key: value for key, value in plan_settings(plan.to_spec()).items() if key != "name"}


def _levels_text(levels: list) -> str:
    values = [f"{float(v):g}" for v in levels]
    return f"{values[0]}-{values[-1]}" if len(values) > 2 else ", ".join(values)


# How a plan's differing setting is named in the name of the plan made for it (the first three differences).
_NAME_PARTS = {
    "levels": lambda v: f"levels {_levels_text(v)}", "duration_s": lambda v: f"{v:g} s",
    "warmup_s": lambda v: f"warm-up {v:g} s", "tokens": lambda v: f"{v} tokens", "batch": lambda v: f"batch {v}",
    "dimensions": lambda v: f"{v or 'model'} dims", "mode": lambda v: f"{v} loop",
}


def _differences(settings: dict, other: dict) -> list[str]:
    return [key for key in settings if settings.get(key) != other.get(key)]


def _variant_name(name: str, settings: dict, differing: list[str]) -> str:
    parts = [_NAME_PARTS[key](settings[key]) for key in _NAME_PARTS if key in differing][:3]
    if not parts:
        parts = [f"{key} {settings[key]}" for key in differing[:2]]
    suffix = f" ({', '.join(parts)})"
    return name[:100 - len(suffix)] + suffix


def _match_plan(team, spec: dict) -> tuple[Plan, str]:
    """The team's plan this document's sweep belongs to, and what was done, in words.

    A plan of the document's name is used only when its settings are the document's; otherwise the
    sweep is filed under a plan named after what differs ("smoke (levels 16-64, 3 s)"), made when
    missing, so unlike sweeps never share one history."""
    name = _plan_name(spec)
    wanted = Plan.from_spec({**spec, "name": name}, team=team)
    settings = _plan_settings(wanted)
    same_name = Plan.objects.filter(team=team, name=name).order_by("id").first()
    if same_name is None:
        wanted.save()
        return wanted, f"Filed under a new plan “{name}”."
    if _plan_settings(same_name) == settings:
        return same_name, f"Filed under the plan “{name}”."
    differing = _differences(settings, _plan_settings(same_name))
    base = _variant_name(name, settings, differing)
    what = ", ".join(differing)
    for n in range(1, 100):
        candidate = base if n == 1 else f"{base[:100 - len(str(n)) - 1]} {n}"
        plan = Plan.objects.filter(team=team, name=candidate).order_by("id").first()
        if plan is not None and _plan_settings(plan) == settings:
            return plan, (f"Filed under the plan “{candidate}”: the plan “{name}” has other settings ({what}).")
        if plan is None:
            wanted.name = candidate
            wanted.save()
            return wanted, (f"Filed under a new plan “{candidate}”: the plan “{name}” has other settings "
                            f"({what}), and sweeps of unlike plans never share a history.")
    raise IngestError({"plan.name": [f"The plan “{name}” and 99 variants of it have other settings than this "
                                     "document's; give the sweep a plan name of its own (--plan-name)."]})


def ingest_document(doc, *, team, user=None) -> Run:
    """Validate and store a result document as a Run (source=ingest) with its levels.

    Raises IngestError (nothing saved) or AlreadyIngested (the run's uuid is already stored).
    """
    times = validate_document(doc)
    run_spec = doc["run"]
    if run_spec.get("uuid"):
        # Only the caller's own teams are looked in: another team's run is neither found nor named.
        visible = Run.objects.filter(team__in=Team.objects.for_user(user)) if user is not None else Run.objects.none()
        existing = visible.filter(uuid=run_spec["uuid"]).first() or Run.objects.filter(
            team=team, uuid=run_spec["uuid"]).first()
        if existing is not None:
            raise AlreadyIngested(existing)
    with transaction.atomic():
        target = _match_target(team, doc["target"])
        plan, plan_note = _match_plan(team, doc["plan"])
        target_config = public_target(doc["target"])
        plan_config = dict(doc["plan"])
        plan_config.setdefault("name", plan.name)
        run = Run.objects.create(
            team=team,
            target=target,
            plan=plan,
            target_config=target_config,
            plan_config=plan_config,
            server_config=dict(run_spec.get("server_config") or {}),
            label=run_spec.get("label") or "",
            notes=run_spec.get("notes") or "",
            status=run_spec["status"],
            status_reason=run_spec.get("status_reason") or "",
            source=Run.Source.INGEST,
            created_by=user if user is not None and user.is_authenticated else None,
            started=times["started"],
            finished=times["finished"],
            worker_host=str((doc.get("client") or {}).get("host") or "")[:200],
            **({"uuid": run_spec["uuid"]} if run_spec.get("uuid") else {}),
        )
        if times["started"] is not None:
            # History orders by creation: an ingested run belongs where it was run, not where it was uploaded.
            Run.objects.filter(pk=run.pk).update(created=times["started"])
            run.created = times["started"]
        record_document(run, doc)
    run.plan_note = plan_note
    return run
