"""The Celery app. Start a worker with `celery -A workers worker -Q sweeps`.

The app itself lives in portal/taskqueue.py so that the portal can enqueue by task name without
importing the workers; here the workers' tasks are registered on it.
"""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

from portal.taskqueue import app  # noqa: E402  (needs DJANGO_SETTINGS_MODULE)

app.autodiscover_tasks(["workers"])
