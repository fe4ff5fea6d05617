"""Operations that span several models: starting a run, storing a finished level."""
import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from portal.sweeps.models import Level, Plan, Run, Target

logger = logging.getLogger(__name__)

# Added to a plan's expected duration for the probe, input calibration and start-up,
# then a share on top for slow servers; the hard limit leaves the soft one time to clean up.
TIME_LIMIT_MARGIN_S = 120
TIME_LIMIT_FACTOR = 1.25
HARD_LIMIT_GRACE_S = 60
PROBE_SOFT_LIMIT_S = 60
# A probe nobody picked up within this time is dropped: the page has long stopped waiting.
PROBE_EXPIRES_S = 300


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


def level_columns(doc: dict) -> dict:
    """Map one level of a result document (embperf.run/1) onto Level's columns."""
    latency = doc.get("latency_ms") or {}
    client = doc.get("client") or {}
    energy = doc.get("energy") or {}
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
        **gpu_totals(doc),
        "joules_per_1k_tokens": energy.get("joules_per_1k_tokens"),
    }


@transaction.atomic
def store_level(run: Run, doc: dict) -> Level:
    """Write one finished level; storing the same (run, index) again replaces it (idempotent)."""
    level, _ = Level.objects.update_or_create(
        run=run, index=doc["index"], defaults={**level_columns(doc), "data": doc}
    )
    return level


def sweep_time_limits(plan: Plan) -> tuple[int, int]:
    """(soft, hard) Celery time limits in seconds for a sweep of this plan."""
    soft = int(plan.expected_seconds() * TIME_LIMIT_FACTOR + TIME_LIMIT_MARGIN_S)
    return soft, soft + HARD_LIMIT_GRACE_S


def _broker_failure(exc: Exception) -> str:
    return (f"Could not hand the job to a worker: the task broker ({_broker_name()}) did not answer "
            f"({type(exc).__name__}: {exc}). Check that it is running and that CELERY_BROKER_URL points at it.")


def _broker_name() -> str:
    url = str(getattr(settings, "CELERY_BROKER_URL", "") or "")
    return url.split("://", 1)[0] + "://…" if "://" in url else url or "default"


def start_run(*, target: Target, plan: Plan, user=None, label: str = "", notes: str = "",
              server_config: dict | None = None, source: str = Run.Source.PORTAL) -> Run:
    """Create a queued run and hand it to the workers of the target's queue, with time limits sized
    from the plan. When the broker cannot be reached the run is marked failed with the reason."""
    from workers.tasks import run_sweep

    run = create_run(target=target, plan=plan, user=user, label=label, notes=notes,
                     server_config=server_config, source=source)
    soft, hard = sweep_time_limits(plan)
    queue = target.queue or "sweeps"

    def enqueue():
        try:
            run_sweep.apply_async(args=[run.pk], queue=queue, soft_time_limit=soft, time_limit=hard)
        except Exception as exc:
            logger.exception("run %s: could not enqueue", run.pk)
            Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED).update(
                status=Run.Status.FAILED, status_reason=_broker_failure(exc), finished=timezone.now()
            )
            run.refresh_from_db()

    # The worker must find the row: publish only once the transaction that created it commits.
    transaction.on_commit(enqueue)
    return run


def request_cancel(run: Run) -> Run:
    """Cancel a run: a queued one ends at once, a running one is asked to stop (the worker checks
    the flag every half second and the engine stops within a second). A running run whose worker
    went silent (heartbeat older than EMBPERF_STALE_AFTER_S) ends at once too: no worker would read
    the flag. Returns the refreshed run."""
    cancelled = Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED).update(
        status=Run.Status.CANCELLED, cancel_requested=True, finished=timezone.now(),
        status_reason="Cancelled before it started.",
    )
    if not cancelled:
        Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(cancel_requested=True)
        silent = Run.objects.filter(pk=run.pk).stale()
        for row in silent.only("pk", "worker_host", "heartbeat", "started"):
            age = row.heartbeat_age_s()
            heard = f"{age:.0f} s ago" if age is not None else "never"
            silent.end_as(Run.Status.CANCELLED, (
                f"Cancelled on request. Its worker {row.worker_host or '(unknown)'} was last heard from {heard} "
                "(it probably died), so the run was ended here at once; levels finished before that are kept."))
    run.refresh_from_db()
    return run


def request_probe(target: Target) -> None:
    """Ask a worker of the target's queue to probe it; the answer lands on Target.last_probe."""
    from workers.tasks import probe_target

    now = timezone.now()
    Target.objects.filter(pk=target.pk).update(probe_requested_at=now)
    target.probe_requested_at = now
    try:
        probe_target.apply_async(args=[target.pk], queue=target.queue or "sweeps", expires=PROBE_EXPIRES_S,
                                 soft_time_limit=PROBE_SOFT_LIMIT_S, time_limit=PROBE_SOFT_LIMIT_S + 30)
    except Exception as exc:
        logger.exception("target %s: could not enqueue the probe", target.pk)
        target.last_probe = {"ok": False, "error": _broker_failure(exc), "hint": None, "at": now.isoformat()}
        Target.objects.filter(pk=target.pk).update(last_probe=target.last_probe)
