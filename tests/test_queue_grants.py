"""Queues belong to teams: a target may name the open queues and those granted to its team; a queued
run shows its place in its queue."""
import pytest
from django.urls import reverse

from portal.sweeps.models import QueueGrant, Run, Target
from portal.sweeps.services import create_run, request_probe
from tests.api_support import token_client

pytestmark = pytest.mark.usefixtures("fresh_throttles")

TARGET = {"name": "gpu", "flavor": "openai", "base_urls": "http://10.0.0.5:30000/v1", "model_name": "m",
          "engine": "other", "gpu_source": "none", "metrics_urls": "", "launch_config": "", "gpu_indices": ""}


def _refusal(team, queue="gpu-host-2"):
    return (f"The queue “{queue}” is not granted to {team.name}; this team's targets may use: "
            + ", ".join(QueueGrant.objects.queues_for(team))
            + ". An administrator grants queues (admin: Queue grants).")


def test_form_refuses_a_queue_not_granted_to_the_team(client, owner, team, other_team):
    QueueGrant.objects.create(team=other_team, queue="gpu-host-2")  # another team's host
    client.force_login(owner)
    response = client.post(reverse("target-create"), {**TARGET, "queue": "gpu-host-2"})
    assert response.status_code == 200
    assert response.context["form"].errors["queue"] == [_refusal(team)]
    assert not Target.objects.filter(name="gpu").exists()


def test_api_refuses_it_with_the_same_message(owner, team, other_team):
    QueueGrant.objects.create(team=other_team, queue="gpu-host-2")
    api = token_client(owner)
    body = {"name": "gpu", "base_urls": ["http://10.0.0.5:30000/v1"], "model_name": "m", "queue": "gpu-host-2"}
    response = api.post("/api/v1/targets/", body)
    assert response.status_code == 400 and response.json()["queue"] == [_refusal(team)]


def test_granted_and_open_queues_are_accepted(client, owner, team):
    QueueGrant.objects.create(team=team, queue="gpu-host-1")
    client.force_login(owner)
    for name, queue in (("a", "gpu-host-1"), ("b", "sweeps")):
        response = client.post(reverse("target-create"), {**TARGET, "name": name, "queue": queue})
        assert response.status_code == 302, response.context["form"].errors
    assert set(Target.objects.values_list("queue", flat=True)) == {"gpu-host-1", "sweeps"}
    # The form says which queues the team may use.
    html = client.get(reverse("target-create")).content.decode()
    assert "open to this team: sweeps, gpu-host-1." in html


def test_open_queues_follow_the_setting(owner, team, settings):
    settings.EMBPERF_OPEN_QUEUES = ["shared-a", "shared-b"]
    api = token_client(owner)
    body = {"name": "x", "base_urls": ["http://10.0.0.5:30000/v1"], "model_name": "m"}
    assert api.post("/api/v1/targets/", {**body, "queue": "shared-b"}).status_code == 201
    response = api.post("/api/v1/targets/", {**body, "name": "y", "queue": "sweeps"})
    assert response.status_code == 400 and "shared-a, shared-b" in response.json()["queue"][0]


def test_a_withdrawn_grant_stops_runs_and_probes(client, owner, team, plan):
    grant = QueueGrant.objects.create(team=team, queue="gpu-host-1")
    target = Target.objects.create(team=team, name="gpu", base_urls=["http://10.0.0.5:30000/v1"], model_name="m",
                                   queue="gpu-host-1")
    grant.delete()
    api = token_client(owner)
    response = api.post("/api/v1/runs/", {"target": target.pk, "plan": plan.pk})
    assert response.status_code == 400 and "not granted to" in response.json()["target"][0]
    client.force_login(owner)
    response = client.post(reverse("run-create"), {"target": target.pk, "plan": plan.pk})
    assert response.status_code == 200 and "not granted to" in response.context["form"].errors["target"][0]
    assert not Run.objects.exists()
    request_probe(target)  # never handed to a worker of that queue
    target.refresh_from_db()
    assert target.probe_requested_at is None and "not granted to" in target.last_probe["error"]


def test_a_queued_run_shows_its_place_in_its_queue(client, owner, target, plan, other_team):
    from portal.sweeps.models import Plan

    other_target = Target.objects.create(team=other_team, name="theirs", base_urls=["http://10.0.0.9/v1"],
                                         model_name="m", queue=target.queue)
    other_plan = Plan.objects.create(team=other_team, name="p", levels=[1])
    first = create_run(target=other_target, plan=other_plan)  # another team, same shared queue
    elsewhere = create_run(target=target, plan=plan)  # a run on another queue is not ahead of it
    Run.objects.filter(pk=elsewhere.pk).update(target_config={**elsewhere.target_config, "queue": "elsewhere"})
    mine = create_run(target=target, plan=plan)
    assert first.queue_position() == 1 and mine.queue_position() == 2
    client.force_login(owner)
    html = client.get(mine.get_absolute_url()).content.decode()
    assert "Waiting for a worker on queue “sweeps”: position 2, 1 run ahead of it." in html
    state = client.get(reverse("run-progress", args=[mine.pk])).json()
    assert state["queue_position"] == 2 and "position 2" in state["queue_text"]
    Run.objects.filter(pk=first.pk).update(status=Run.Status.RUNNING)
    assert Run.objects.get(pk=mine.pk).queue_position() == 1
    Run.objects.filter(pk=mine.pk).update(status=Run.Status.RUNNING)
    assert Run.objects.get(pk=mine.pk).queue_position() is None
