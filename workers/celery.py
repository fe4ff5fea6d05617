"""The Celery app. Start a worker with `celery -A workers worker -Q sweeps`.

The app itself lives in portal/taskqueue.py so that the portal can enqueue by task name without
importing the workers; here the workers' tasks are registered on it.
"""
import os

from workers import broker

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
broker.install()  # transports that survive a Redis restart and a removed broker folder

from portal.taskqueue import app  # noqa: E402  (needs DJANGO_SETTINGS_MODULE)

app.autodiscover_tasks(["workers"])
