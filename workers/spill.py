"""Results the database could not take, kept in files until it can.

When the database stays away past EMBPERF_DB_RETRY_S, the sweep stops and its whole result document
(levels, summary, probe, client, inputs, telemetry notes) with its ending goes to
`EMBPERF_VAR_DIR/unsaved/run-<id>-<time>.json` on the worker's host, never dropped. The run's reason
names that file. The worker's timer (workers.recovery) keeps trying to write pending files back: once
the database answers it stores the whole document, the run's final status, its ended progress and a
reason saying the results are back, then marks the file written (the file is kept for the operator).
"""
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.db import transaction

from portal.sweeps.documents import record_document
from portal.sweeps.models import Run

logger = logging.getLogger(__name__)

SCHEMA = "embperf.unsaved/1"


def unsaved_dir() -> Path:
    return Path(settings.VAR_DIR) / "unsaved"


def path_for(run_id: int) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return unsaved_dir() / f"run-{run_id}-{stamp}.json"


def save(path: Path, run_id: int, *, status: str, reason: str, levels: list[dict], document: dict | None,
         cause: str = "", progress: dict | None = None) -> Path:
    """Write the run's whole document (levels and run-wide sections), final status and progress to `path`
    (atomically: a temporary file, then a rename). `cause` says in a sentence what kept them from the
    database; it opens the reason the run gets once they are written back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"schema": SCHEMA, "run_id": run_id, "status": status, "reason": reason, "pending": True,
            "levels": levels, "document": {k: v for k, v in (document or {}).items() if k != "levels"},
            "cause": cause, "progress": {**(progress or {}), "phase": "done"},
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
            write_back(run_id, body, path)
            logger.warning("run %s: the results kept in %s are now in the database", run_id, path)
        body["pending"] = False
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, default=str))
        tmp.replace(path)
        written.append(run_id)
    return written


def written_back_reason(body: dict, path: Path) -> str:
    """The run's reason once a file's results are in the database: what happened, and that they are back."""
    levels = len(body.get("levels") or [])
    what = body.get("cause") or "The database was unreachable while this run was measured"
    return (f"{what}. Its {levels} measured level(s) were kept in {path} on the worker and "
            f"written back at {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}, once the database "
            "answered again: the results below are complete up to where the sweep stopped. Resume the run to "
            "measure the rest.")


@transaction.atomic
def write_back(run_id: int, body: dict, path: Path) -> None:
    """Store a file's whole run document (levels, summary, probe, client, inputs, telemetry notes) and
    its ending. A run the stale sweeper meanwhile marked interrupted, or whose final write carried the
    file's reason, gets the real ending and a reason that says its results are back."""
    run = Run.objects.select_for_update().get(pk=run_id)
    document = {**(body.get("document") or {}), "levels": list(body.get("levels") or [])}
    reason = written_back_reason(body, path)
    if not (body.get("document") or {}).get("summary"):
        document.pop("summary", None)  # no summary to restore: keep whatever the run has
    record_document(run, document)
    if run.status in (Run.Status.RUNNING, Run.Status.INTERRUPTED) or (
            run.status == body["status"] and run.status_reason == body["reason"]):
        stopped = body.get("saved_at")
        finished = datetime.fromisoformat(stopped) if stopped else datetime.now(UTC)
        progress = {**(run.progress or {}), **(body.get("progress") or {}), "phase": "done",
                    "updated_at": finished.isoformat()}
        Run.objects.filter(pk=run_id).update(status=body["status"], status_reason=reason, finished=finished,
                                             progress=progress)
