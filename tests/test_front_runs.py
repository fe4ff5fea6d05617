"""Starting a run from the portal and the run list (filters, order, pages)."""
import pytest
from django.urls import reverse

from portal.sweeps.models import Run

pytestmark = pytest.mark.django_db


def test_start_run(client, owner, target, plan, enqueued, django_capture_on_commit_callbacks):
    client.force_login(owner)
    data = {"target": target.pk, "plan": plan.pk, "label": "mrr-128", "notes": "first try",
            "server_config": "--max-running-requests 128\nchunked_prefill=off"}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("run-create"), data)
    run = Run.objects.get()
    assert response.status_code == 302 and response["Location"] == run.get_absolute_url()
    assert run.status == "queued" and run.label == "mrr-128" and run.notes == "first try"
    assert run.server_config == {"--max-running-requests": "128", "chunked_prefill": "off"}
    assert run.created_by == owner and run.team == target.team
    assert run.plan_config["levels"] == [1, 4] and run.target_config["name"] == "sim"
    (call,) = enqueued
    assert call["name"] == "workers.tasks.run_sweep"
    assert call["args"] == [run.pk] and call["queue"] == target.queue


def test_start_form_prefills_from_query(client, owner, target, plan):
    client.force_login(owner)
    form = client.get(reverse("run-create") + f"?target={target.pk}&plan={plan.pk}&label=again").context["form"]
    assert form["target"].value() == str(target.pk) and form["label"].value() == "again"


@pytest.mark.parametrize(
    "change, field, message",
    [
        ({"server_config": "=1"}, "server_config", "has a value but no key"),
        ({"server_config": "--x 1\n--x 2"}, "server_config", "already set above"),
        ({"target": ""}, "target", "This field is required"),
        ({"plan": "999999"}, "plan", "Select a valid choice"),
    ],
)
def test_bad_input_saves_nothing(client, owner, target, plan, enqueued, change, field, message):
    client.force_login(owner)
    data = {"target": target.pk, "plan": plan.pk, "label": "", "notes": "", "server_config": "", **change}
    response = client.post(reverse("run-create"), data)
    assert response.status_code == 200
    assert message in " ".join(response.context["form"].errors[field])
    assert Run.objects.count() == 0 and enqueued == []


def test_cannot_start_another_teams_target(client, outsider, target, plan, enqueued):
    client.force_login(outsider)
    response = client.post(reverse("run-create"), {"target": target.pk, "plan": plan.pk})
    assert response.status_code == 200 and Run.objects.count() == 0


def test_plan_of_another_team_is_refused(client, owner, target, other_team, enqueued):
    from portal.accounts.models import Membership
    from portal.sweeps.models import Plan

    Membership.objects.create(team=other_team, user=owner, role="member")
    foreign = Plan.objects.create(team=other_team, name="theirs", levels=[1])
    client.force_login(owner)
    response = client.post(reverse("run-create"), {"target": target.pk, "plan": foreign.pk})
    assert "pick a plan of" in " ".join(response.context["form"].errors["plan"])
    assert Run.objects.count() == 0


def test_broker_down_marks_the_run_failed_with_reason(client, owner, target, plan, monkeypatch,
                                                      django_capture_on_commit_callbacks):
    from portal.taskqueue import app

    def refuse(*args, **kwargs):
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    monkeypatch.setattr(app, "send_task", refuse)
    client.force_login(owner)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("run-create"), {"target": target.pk, "plan": plan.pk})
    run = Run.objects.get()
    assert run.status == "failed"
    assert "Connection refused" in client.get(run.get_absolute_url()).content.decode()


def _runs(target, plan, n, **kwargs):
    from portal.sweeps.services import create_run

    return [create_run(target=target, plan=plan, **kwargs) for _ in range(n)]


def test_list_newest_first_and_paginated(client, owner, target, plan):
    runs = _runs(target, plan, 30)
    client.force_login(owner)
    first = client.get(reverse("run-list"))
    shown = list(first.context["runs"])
    assert len(shown) == 25 and shown[0] == runs[-1]
    assert "Page 1 of 2" in first.content.decode()
    second = client.get(reverse("run-list") + "?page=2")
    assert list(second.context["runs"])[-1] == runs[0]


def test_list_filters(client, owner, target, plan, team):
    from portal.sweeps.models import Plan, Target

    other_target = Target.objects.create(team=team, name="tei", base_urls=["http://127.0.0.1:1"], model_name="m")
    other_plan = Plan.objects.create(team=team, name="classic", levels=[1, 4, 8])
    (a,) = _runs(target, plan, 1, label="baseline-a")
    (b,) = _runs(other_target, plan, 1, label="mrr-128")
    (c,) = _runs(target, other_plan, 1, label="mrr-256")
    Run.objects.filter(pk=c.pk).update(status="succeeded")
    client.force_login(owner)

    def ids(query):
        return {r.pk for r in client.get(reverse("run-list") + query).context["runs"]}

    assert ids("") == {a.pk, b.pk, c.pk}
    assert ids(f"?target={other_target.pk}") == {b.pk}
    assert ids(f"?plan={other_plan.pk}") == {c.pk}
    assert ids("?status=succeeded") == {c.pk}
    assert ids("?label=MRR") == {b.pk, c.pk}
    assert ids(f"?label=mrr&target={target.pk}") == {c.pk}
    assert "No runs match these filters" in client.get(reverse("run-list") + "?label=zzz").content.decode()


def test_list_hides_other_teams_runs(client, outsider, target, plan):
    _runs(target, plan, 2)
    client.force_login(outsider)
    assert list(client.get(reverse("run-list")).context["runs"]) == []
    response = client.get(reverse("run-list") + f"?target={target.pk}")
    assert list(response.context["runs"]) == []
