"""Queued work is reconciled (portal.sweeps.reconcile): a queued run whose broker message is gone is
sent again once, then failed with a reason; `enqueue/` sends it again instead of refusing it."""
from datetime import timedelta

import pytest
from django.utils import timezone

from portal.sweeps.models import Run, WorkerPresence
from portal.sweeps.reconcile import reconcile_queued
from portal.sweeps.services import create_run
from tests.api_support import token_client

pytestmark = pytest.mark.usefixtures("fresh_throttles")


@pytest.fixture
def sent(monkeypatch):
    from portal import taskqueue

    calls = []
    monkeypatch.setattr(taskqueue.app, "send_task", lambda *args, **kwargs: calls.append(kwargs))
    return calls


def queued(target, plan, *, age_s: float) -> Run:
    run = create_run(target=target, plan=plan)
    Run.objects.filter(pk=run.pk).update(created=timezone.now() - timedelta(seconds=age_s))
    run.refresh_from_db()
    return run


def worker(queue: str, *, free_for_s: float | None, holding=()) -> None:
    free_since = None if free_for_s is None else timezone.now() - timedelta(seconds=free_for_s)
    WorkerPresence.report("w@a", [queue], free_since=free_since, holding=list(holding))


def test_a_queued_run_no_free_worker_received_is_sent_again_once_then_failed(db, target, plan, settings, sent):
    settings.EMBPERF_REQUEUE_AFTER_S = 60
    run = queued(target, plan, age_s=120)
    worker(target.queue, free_for_s=90)
    assert reconcile_queued([target.queue]) == [run.pk]
    run.refresh_from_db()
    assert run.status == Run.Status.QUEUED and run.resent_at is not None
    assert "The broker lost this run's message" in run.status_reason and "sent again" in run.status_reason
    assert [call["args"] for call in sent] == [[run.pk]]
    assert reconcile_queued([target.queue]) == []  # not again before another bound has passed
    Run.objects.filter(pk=run.pk).update(resent_at=timezone.now() - timedelta(seconds=61))
    assert reconcile_queued([target.queue]) == [run.pk]
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED and run.never_started
    assert "lost this run's message twice" in run.status_reason
    assert len(sent) == 1


def test_a_run_held_by_a_worker_or_behind_busy_workers_is_left_alone(db, target, plan, settings, sent):
    settings.EMBPERF_REQUEUE_AFTER_S = 60
    run = queued(target, plan, age_s=120)
    worker(target.queue, free_for_s=90, holding=[run.pk])  # e.g. its countdown while it waits for its target
    assert reconcile_queued([target.queue]) == []
    worker(target.queue, free_for_s=None)  # every pool process busy: the message may be waiting its turn
    assert reconcile_queued([target.queue]) == []
    worker(target.queue, free_for_s=10)  # free, but not for a whole bound yet
    assert reconcile_queued([target.queue]) == []
    # Waiting for its target while the target's run still measures it.
    other = create_run(target=target, plan=plan)
    Run.objects.filter(pk=other.pk).update(status=Run.Status.RUNNING, started=timezone.now(), heartbeat=timezone.now())
    worker(target.queue, free_for_s=90)
    assert reconcile_queued([target.queue]) == []
    # The target's run ended only just now: the waiting run has a bound to be taken up.
    Run.objects.filter(pk=other.pk).update(status=Run.Status.SUCCEEDED, finished=timezone.now())
    assert reconcile_queued([target.queue]) == []
    assert not sent


def test_enqueue_sends_a_lost_queued_run_again_and_says_why_it_refuses_otherwise(db, target, plan, owner, settings,
                                                                                  sent):
    settings.EMBPERF_REQUEUE_AFTER_S = 60
    run = queued(target, plan, age_s=120)
    api = token_client(owner)
    response = api.post(f"/api/v1/runs/{run.pk}/enqueue/")  # no worker reported: nothing to judge by
    assert response.status_code == 409
    assert "is queued" in response.json()["detail"] and "already taken" not in response.json()["detail"]
    worker(target.queue, free_for_s=90)
    response = api.post(f"/api/v1/runs/{run.pk}/enqueue/")
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "queued"
    run.refresh_from_db()
    assert run.resent_at is not None and [call["args"] for call in sent] == [[run.pk]]
