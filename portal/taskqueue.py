"""The task queue as the portal sees it: the Celery app, configured from Django's settings.

The portal hands work to the workers by task name and never imports their code; the workers
(`workers/celery.py`) register their tasks on this same app.
"""
from celery import Celery

app = Celery("embperf")
app.config_from_object("django.conf:settings", namespace="CELERY")

# The names the workers register their tasks under (workers/tasks.py).
RUN_SWEEP = "workers.tasks.run_sweep"
PROBE_TARGET = "workers.tasks.probe_target"


def enqueue(name: str, *, args: list, **options) -> None:
    """Send the task `name` with these arguments and options (queue, time limits, expiry)."""
    app.send_task(name, args=args, **options)
