"""Run again (page and API): a repeat keeps the target, plan, label and server config, says whose
repeat it is, and lands in the same history segment as the run it repeats."""
import datetime as dt

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from portal.accounts.models import Membership
from portal.history.timeline import build_history
from portal.sweeps.models import Run
from tests.api_support import token_client
from tests.factories import stored_run

pytestmark = pytest.mark.usefixtures("fresh_throttles")

TUNED = {"--max-running-requests": "128", "--enable-metrics": ""}


@pytest.fixture
def tuned(target, plan):
    return stored_run(target=target, plan=plan, label="tuned", seed=1, duration_s=4, server_config=TUNED,
                      created=dt.datetime(2026, 3, 1, tzinfo=dt.UTC))


def _submit(client, url):
    """Load the form and send it back as a person pressing *Start run* would, without touching a field."""
    form = client.get(url).context["form"]
    data = {name: field.widget.format_value(field.prepare_value(form[name].value())) or ""
            for name, field in form.fields.items()}
    data = {k: ("" if v is None else v) for k, v in data.items()}
    return client.post(url, data)


def test_run_again_keeps_the_server_config_and_says_repeat_of(client, owner, tuned, enqueued,
                                                                django_capture_on_commit_callbacks):
    client.force_login(owner)
    page = client.get(tuned.get_absolute_url()).content.decode()
    again_url = reverse("run-create") + f"?repeat={tuned.pk}"
    assert f'href="{again_url}"' in page.replace("&amp;", "&")
    form_page = client.get(again_url).content.decode()
    assert f"Repeat of <a href=\"/runs/{tuned.pk}/\">#{tuned.pk}</a>" in form_page
    assert "--max-running-requests 128" in form_page

    with django_capture_on_commit_callbacks(execute=True):
        response = _submit(client, again_url)
    assert response.status_code == 302
    repeat = Run.objects.exclude(pk=tuned.pk).get()
    assert repeat.server_config == TUNED
    assert (repeat.target, repeat.plan, repeat.label, repeat.repeat_of) == (tuned.target, tuned.plan, "tuned", tuned)
    assert [call["args"] for call in enqueued] == [[repeat.pk]]
    followed = client.get(response["Location"])
    assert f"a repeat of #{tuned.pk}" in followed.content.decode()
    assert f'repeat of <a href="/runs/{tuned.pk}/">#{tuned.pk}</a>' in followed.content.decode()

    # Same snapshots: one segment of the history.
    Run.objects.filter(pk=repeat.pk).update(status=Run.Status.SUCCEEDED)
    hist = build_history(Run.objects.filter(target=tuned.target, plan=tuned.plan))
    assert [[p.id for p in s.points] for s in hist.segments] == [[tuned.pk, repeat.pk]]


def test_changing_the_server_config_is_no_repeat(client, owner, tuned, enqueued):
    client.force_login(owner)
    url = reverse("run-create") + f"?repeat={tuned.pk}"
    response = client.post(url, {"target": tuned.target_id, "plan": tuned.plan_id, "label": "tuned",
                                 "server_config": "--max-running-requests 256", "notes": "",
                                 "repeat_of": tuned.pk})
    assert response.status_code == 302
    run = Run.objects.exclude(pk=tuned.pk).get()
    assert run.repeat_of is None and run.server_config == {"--max-running-requests": "256"}
    body = client.get(response["Location"]).content.decode()
    assert f"It is not a repeat of #{tuned.pk}" in body


def test_run_again_says_when_the_target_changed_since(client, owner, tuned):
    tuned.target.base_urls = ["http://127.0.0.1:9200/v1"]
    tuned.target.save()
    client.force_login(owner)
    body = client.get(reverse("run-create") + f"?repeat={tuned.pk}").content.decode()
    assert "this run starts a new segment" in body
    assert "Base URLs: http://127.0.0.1:9100/v1 → http://127.0.0.1:9200/v1" in body


def test_outsider_gets_404_on_run_again(client, outsider, tuned):
    client.force_login(outsider)
    assert client.get(reverse("run-create") + f"?repeat={tuned.pk}").status_code == 404


def test_api_repeat_keeps_the_server_config(owner, tuned, enqueued):
    api = token_client(owner)
    detail = api.get(f"/api/v1/runs/{tuned.pk}/").json()
    assert detail["links"]["repeat"] == f"/api/v1/runs/{tuned.pk}/repeat/"
    response = api.post(detail["links"]["repeat"])
    assert response.status_code == 201, response.json()
    new = api.get(response.json()["url"]).json()
    assert new["server_config"] == TUNED and new["repeat_of"] == tuned.pk and new["label"] == "tuned"
    assert (new["target"], new["plan"]) == (tuned.target_id, tuned.plan_id)
    assert new["target_config"] == tuned.target_config and new["plan_config"] == tuned.plan_config


def test_api_repeat_permissions_and_gone_target(team, outsider, owner, tuned, enqueued):
    assert token_client(outsider).post(f"/api/v1/runs/{tuned.pk}/repeat/").status_code == 404
    viewer = User.objects.create_user("vera")
    Membership.objects.create(team=team, user=viewer, role="viewer")
    assert token_client(viewer).post(f"/api/v1/runs/{tuned.pk}/repeat/").status_code == 403
    tuned.target.delete()
    response = token_client(owner).post(f"/api/v1/runs/{tuned.pk}/repeat/")
    assert response.status_code == 409 and "has been deleted" in response.json()["detail"]
    assert not enqueued
