"""'Test connection': enqueues the probe on the target's queue and shows its answer or that it waits."""
import pytest
from django.urls import reverse
from django.utils import timezone

pytestmark = pytest.mark.django_db


def test_probe_is_enqueued_on_the_targets_queue(client, owner, target, enqueued):
    from portal.sweeps.models import QueueGrant

    QueueGrant.objects.create(team=target.team, queue="gpu-host-1")
    target.queue = "gpu-host-1"
    target.save()
    client.force_login(owner)
    response = client.post(reverse("target-probe", args=[target.pk]))
    assert response.status_code == 302
    (call,) = enqueued
    assert call["name"] == "workers.tasks.probe_target"
    assert call["args"] == [target.pk] and call["queue"] == "gpu-host-1"
    state = client.get(reverse("target-probe", args=[target.pk])).json()
    assert state["pending"] is True and "Waiting for a worker on queue" in state["html"]


def test_probe_result_is_shown(client, owner, target):
    target.probe_requested_at = timezone.now() - timezone.timedelta(seconds=5)
    target.last_probe = target.probe_answer(
        ok=True, served_model="sim-embed", vector_length=1024, prompt_tokens=7, latency_ms=3.2, status=200,
        error=None, hint=None, at=timezone.now().isoformat())
    target.save()
    client.force_login(owner)
    state = client.get(reverse("target-probe", args=[target.pk])).json()
    assert state["pending"] is False
    assert "Connected" in state["html"] and "1024" in state["html"] and "3.20 ms" in state["html"]
    assert "Connected" in client.get(target.get_absolute_url()).content.decode()


def test_probe_error_in_plain_words(client, owner, target):
    target.probe_requested_at = timezone.now() - timezone.timedelta(seconds=5)
    target.last_probe = target.probe_answer(
        ok=False, status=None, error="connection refused at http://127.0.0.1:9100/v1", hint="Is the server running?",
        at=timezone.now().isoformat())
    target.save()
    client.force_login(owner)
    html = client.get(reverse("target-probe", args=[target.pk])).json()["html"]
    assert "Connection failed" in html and "connection refused" in html and "Is the server running?" in html


def test_an_older_result_does_not_hide_a_new_request(client, owner, target):
    target.last_probe = target.probe_answer(ok=True, at=(timezone.now() - timezone.timedelta(minutes=5)).isoformat())
    target.probe_requested_at = timezone.now()
    target.save()
    client.force_login(owner)
    assert client.get(reverse("target-probe", args=[target.pk])).json()["pending"] is True


def test_outsider_cannot_probe(client, outsider, target, enqueued):
    client.force_login(outsider)
    assert client.post(reverse("target-probe", args=[target.pk])).status_code == 404
    assert enqueued == []
