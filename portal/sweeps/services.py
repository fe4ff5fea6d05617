"""Operations that span several models: starting a run, storing a finished level."""
from django.db import transaction

from portal.sweeps.models import Level, Plan, Run, Target


def create_run(*, target: Target, plan: Plan, user=None, label: str = "", notes: str = "",
               server_config: dict | None = None, source: str = Run.Source.PORTAL) -> Run:
    """Create a queued run with snapshots of its target and plan (the caller enqueues it)."""
    return Run.objects.create(
        team=target.team,
        target=target,
        plan=plan,
        target_config=target.to_spec(with_secret=False),
        plan_config=plan.to_spec(),
        server_config=server_config or {},
        label=label,
        notes=notes,
        created_by=user if user is not None and user.is_authenticated else None,
        source=source,
    )


def level_columns(doc: dict) -> dict:
    """Map one level of a result document (embperf.run/1) onto Level's columns."""
    latency = doc.get("latency_ms") or {}
    client = doc.get("client") or {}
    energy = doc.get("energy") or {}
    gpus = (doc.get("gpu") or {}).get("gpus") or []
    util = [g["utilization_mean"] for g in gpus if g.get("utilization_mean") is not None]
    vram = [g["memory_used_peak_mib"] for g in gpus if g.get("memory_used_peak_mib") is not None]
    power = [g["power_mean_w"] for g in gpus if g.get("power_mean_w") is not None]
    return {
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
        "errors": doc.get("errors") or {},
        "client_bound": bool(client.get("client_bound")),
        "gpu_util_mean": sum(util) / len(util) if util else None,
        "vram_peak_mib": sum(vram) if vram else None,
        "power_mean_w": sum(power) if power else None,
        "joules_per_1k_tokens": energy.get("joules_per_1k_tokens"),
    }


@transaction.atomic
def store_level(run: Run, doc: dict) -> Level:
    """Write one finished level; storing the same (run, index) again replaces it (idempotent)."""
    level, _ = Level.objects.update_or_create(
        run=run, index=doc["index"], defaults={**level_columns(doc), "data": doc}
    )
    return level
