"""The Celery app. Start a worker with `celery -A workers worker -Q sweeps`."""
import os

from celery import Celery

from workers import broker

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
broker.install()  # transports that survive a Redis restart and a removed broker folder

app = Celery("embperf")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers"])
