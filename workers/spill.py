"""Results the database could not take, kept in files until it can.

When the database stays away past EMBPERF_DB_RETRY_S, the sweep stops and its level documents
go to `EMBPERF_VAR_DIR/unsaved/run-<id>-<time>.json` on the worker's host, never dropped. The run's
reason names that file. The worker's timer (workers.recovery) keeps trying to write pending files
back: it stores their levels and the run's final status once the database answers, then marks the
file written (the file itself is kept for the operator).
"""
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from portal.sweeps.documents import record_level
from portal.sweeps.models import Run

logger = logging.getLogger(__name__)

SCHEMA = "embperf.unsaved/1"


def unsaved_dir() -> Path:
    return Path(settings.VAR_DIR) / "unsaved"


def path_for(run_id: int) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return unsaved_dir() / f"run-{run_id}-{stamp}.json"


def save(path: Path, run_id: int, *, status: str, reason: str, levels: list[dict], document: dict | None) -> Path:
    """Write the run's levels and final status to `path` (atomically: a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"schema": SCHEMA, "run_id": run_id, "status": status, "reason": reason, "pending": True,
            "levels": levels, "document": {k: v for k, v in (document or {}).items() if k != "levels"},
            "saved_at": datetime.now(UTC).isoformat()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, default=str))
    tmp.replace(path)
    logger.error("run %s: %d level(s) saved to %s until the database returns", run_id, len(levels), path)
    return path


def write_pending() -> list[int]:
    """Store what pending files hold; returns the run ids written. Database errors propagate."""
    written = []
    folder = unsaved_dir()
    if not folder.is_dir():
        return written
    for path in sorted(folder.glob("run-*.json")):
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):
            logger.warning("%s is not a readable unsaved-results file; left alone", path)
            continue
        if body.get("schema") != SCHEMA or not body.get("pending"):
            continue
        run_id = body["run_id"]
        if Run.objects.filter(pk=run_id).exists():
            run = Run(pk=run_id)
            for level in body.get("levels") or []:
                record_level(run, level)
            # A run the stale sweeper meanwhile marked interrupted gets its real ending and reason.
            Run.objects.filter(pk=run_id, status__in=[Run.Status.RUNNING, Run.Status.INTERRUPTED]).update(
                status=body["status"], status_reason=body["reason"],
                finished=Run.objects.filter(pk=run_id).values_list("finished", flat=True).first() or timezone.now())
            logger.warning("run %s: the results kept in %s are now in the database", run_id, path)
        body["pending"] = False
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, default=str))
        tmp.replace(path)
        written.append(run_id)
    return written
