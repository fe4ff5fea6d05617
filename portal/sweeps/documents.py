"""Recording a result document (embperf.run/1): the one place that splits it into rows.

A document is kept as
- one `Level` row per level: the headline figures as columns (`level_columns`) and the full level
  document in `Level.data`;
- the summary in `Run.summary` (and nowhere else);
- the other run-wide sections (run, target, plan, probe, inputs, client, telemetry notes) in
  `Run.document`.
The worker records each level as it finishes (`record_level`) and the whole document when the run
ends; ingest records a document written elsewhere. `Run.to_document()` puts it back together.
"""
from datetime import UTC

from django.db import transaction
from django.utils import timezone

from portal.sweeps.models import Level, Run

# Sections of a result document that are not kept in Run.document: each has rows or a column of its own.
OWN_ROWS = ("levels", "summary")


def gpu_totals(doc: dict) -> dict:
    """One level's GPUs taken together: mean utilization, summed peak memory and summed mean power
    (None where no GPU reported the figure)."""
    gpus = (doc.get("gpu") or {}).get("gpus") or []
    util = [g["utilization_mean"] for g in gpus if g.get("utilization_mean") is not None]
    vram = [g["memory_used_peak_mib"] for g in gpus if g.get("memory_used_peak_mib") is not None]
    power = [g["power_mean_w"] for g in gpus if g.get("power_mean_w") is not None]
    return {
        "gpu_util_mean": sum(util) / len(util) if util else None,
        "vram_peak_mib": sum(vram) if vram else None,
        "power_mean_w": sum(power) if power else None,
    }


def shape_text(value) -> str:
    """A shape axis value as a level column holds it: "512", "base64"; "" for none."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)[:32]


def level_columns(doc: dict) -> dict:
    """Map one level of a result document onto Level's columns."""
    latency = doc.get("latency_ms") or {}
    client = doc.get("client") or {}
    energy = doc.get("energy") or {}
    return {
        "status": doc.get("status") or Level.Status.COMPLETED,
        "concurrency": doc.get("concurrency"),
        "rate": doc.get("rate"),
        "duration_s": doc.get("duration_s") or 0,
        "requests_ok": doc.get("requests_ok") or 0,
        "requests_failed": doc.get("requests_failed") or 0,
        "qps": doc.get("qps") or 0,
        "texts_per_s": doc.get("texts_per_s") or 0,
        "tokens_per_s": doc.get("tokens_per_s") or 0,
        "latency_mean_ms": latency.get("mean"),
        "latency_p50_ms": latency.get("p50"),
        "latency_p90_ms": latency.get("p90"),
        "latency_p95_ms": latency.get("p95"),
        "latency_p99_ms": latency.get("p99"),
        "latency_p999_ms": latency.get("p999"),
        "latency_max_ms": latency.get("max"),
        "error_rate": doc.get("error_rate") or 0,
        "goodput_per_s": (doc.get("goodput") or {}).get("per_s"),
        "shape_value": shape_text((doc.get("shape") or {}).get("value")),
        "errors": doc.get("errors") or {},
        "client_bound": bool(client.get("client_bound")),
        **gpu_totals(doc),
        "joules_per_1k_tokens": energy.get("joules_per_1k_tokens"),
    }


@transaction.atomic
def record_level(run: Run, level_doc: dict) -> Level:
    """Record one finished level; recording the same (run, index) again replaces it (idempotent)."""
    level, _ = Level.objects.update_or_create(
        run=run, index=level_doc["index"], defaults={**level_columns(level_doc), "data": level_doc}
    )
    return level


@transaction.atomic
def record_document(run: Run, document: dict | None, *, status: str | None = None, status_reason: str = "",
                    progress: dict | None = None) -> None:
    """Record a run's result document: each level (levels already recorded are replaced, so the worker's
    level-by-level writes and this one agree), the summary and the other run-wide sections.

    The worker passes the status the run ended with, and its last progress: the run is then stamped
    finished now and its progress marked done, in the same write. Ingest creates the run with its
    status first and passes neither. A run that ended without a document (`None`) gets its status only.
    """
    fields: dict = {}
    ending: dict = {}
    if status is not None:
        finished = timezone.now()
        ending = {"status": status, "status_reason": status_reason, "finished": finished, "heartbeat": finished}
        if progress is not None:
            fields["progress"] = {**progress, "phase": "done", "updated_at": finished.isoformat()}
    if document:
        for level_doc in document.get("levels") or []:
            record_level(run, level_doc)
        sections = {key: value for key, value in document.items() if key not in OWN_ROWS}
        if status is not None:
            sections["run"] = {**(sections.get("run") or {}), "status": status, "status_reason": status_reason,
                               "finished_at": finished.astimezone(UTC).isoformat()}
        fields["document"] = sections
        fields["summary"] = dict(document.get("summary") or {})
        version = (document.get("client") or {}).get("version")
        if version:
            fields["client_version"] = str(version)[:50]
    with transaction.atomic():
        # A run someone else already ended (the stale-run sweeper, a cancel that found its worker
        # silent) keeps that ending; its levels and sections are stored all the same.
        if ending and Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(**ending):
            fields.update(ending)
        if fields:
            Run.objects.filter(pk=run.pk).update(**fields)
        for name, value in fields.items():
            setattr(run, name, value)
        # The verdict is judged from what is now stored (the status may have been set by someone else).
        run.refresh_from_db(fields=["status", "document", "plan_config"])
        run.judge()
