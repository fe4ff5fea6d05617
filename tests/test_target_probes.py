"""A probe belongs to the URLs it tried: editing them forgets it, a run start refuses a target whose test
of its current URLs failed, the plan-fit checks use only a probe of those URLs, and the API runs
Test connection (throttled and team-permissioned like the page's)."""
import pytest
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from portal.accounts.models import Membership
from portal.sweeps.models import Run, Target
from portal.sweeps.services import plan_misfits, run_start_errors
from tests.api_support import token_client

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_throttles")]

NEW_URL = "http://127.0.0.1:9200/v1"


def probed(target, **answer) -> Target:
    """The target with a stored probe answer for its current URLs."""
    answer = {"served_model": "sim-embed", "vector_length": 64, "latency_ms": 3.0, "status": 200, "error": None,
              "hint": None, "url": target.base_urls[0], "at": timezone.now().isoformat(), "ok": True, **answer}
    target.last_probe = target.probe_answer(**answer)
    target.save()
    return target


def failed(target) -> Target:
    return probed(target, ok=False, status=None, vector_length=None, served_model=None,
                  error=f"connection refused at {target.base_urls[0]}", hint="Is the server running?")


@pytest.fixture
def viewer(team):
    from django.contrib.auth.models import User

    user = User.objects.create_user("vera", password="password")
    Membership.objects.create(team=team, user=user, role="viewer")
    return user


# ---- an edit of the URLs forgets the probe -------------------------------------------------------------


def test_a_probe_is_stored_with_the_urls_it_tried(target):
    probed(target)
    assert target.last_probe["base_urls"] == target.base_urls
    assert target.current_probe == target.last_probe


def test_changing_the_base_urls_on_the_page_clears_connected(client, owner, target):
    probed(target)
    client.force_login(owner)
    assert "Connected" in client.get(target.get_absolute_url()).content.decode()
    data = {"name": target.name, "flavor": target.flavor, "base_urls": NEW_URL, "model_name": target.model_name,
            "engine": target.engine, "gpu_source": "none", "queue": target.queue}
    response = client.post(reverse("target-edit", args=[target.pk]), data)
    assert response.status_code == 302, response.context["form"].errors
    target.refresh_from_db()
    assert target.base_urls == [NEW_URL]
    assert target.last_probe is None and target.probe_requested_at is None
    page = client.get(target.get_absolute_url()).content.decode()
    assert "Connected" not in page and "127.0.0.1:9100" not in page.split("Test connection", 1)[-1]
    assert "OK" not in client.get(reverse("target-list")).content.decode().split("<tbody>", 1)[-1]


def test_changing_the_base_urls_through_the_api_clears_last_probe(owner, target):
    probed(target)
    api = token_client(owner)
    assert api.get(f"/api/v1/targets/{target.pk}/").json()["last_probe"]["ok"] is True
    body = api.patch(f"/api/v1/targets/{target.pk}/", {"base_urls": [NEW_URL]}).json()
    assert body["last_probe"] is None
    target.refresh_from_db()
    assert target.last_probe is None


def test_an_edit_that_keeps_the_urls_keeps_the_probe(owner, target):
    probed(target)
    api = token_client(owner)
    body = api.patch(f"/api/v1/targets/{target.pk}/", {"engine_version": "0.6"}).json()
    assert body["last_probe"]["ok"] is True and body["last_probe"]["base_urls"] == target.base_urls


def test_a_probe_of_other_urls_is_never_shown_or_used(owner, target, plan):
    # Stored before probes kept their URLs, or by a writer that raced an edit: it names another server.
    target.last_probe = {"ok": True, "vector_length": 32, "url": "http://old.example:8000/v1", "at": "2026-01-01"}
    target.save()
    assert target.current_probe is None
    body = token_client(owner).get(f"/api/v1/targets/{target.pk}/").json()
    assert body["last_probe"] is None and "old.example" not in str(body)
    assert plan_misfits(target, plan) == []  # the plan asks for 64 dimensions; that probe saw 32


def test_the_dimension_check_uses_a_probe_of_the_current_urls(target, plan):
    probed(target, vector_length=32)
    assert plan_misfits(target, plan) and "32" in plan_misfits(target, plan)[0]
    target.base_urls = [NEW_URL]
    target.save()
    target.refresh_from_db()
    assert plan_misfits(target, plan) == []


def test_the_worker_does_not_store_an_answer_about_urls_the_target_left(transactional_db, team, monkeypatch):
    from benchmarks import probe as engine_probe
    from workers.tasks import probe_target

    target = Target.objects.create(team=team, name="moving", base_urls=["http://127.0.0.1:9300/v1"], model_name="m")

    def probe_while_the_target_moves(spec, **kwargs):
        Target.objects.filter(pk=target.pk).update(base_urls=[NEW_URL])  # an edit lands while the probe runs
        return {"ok": True, "served_model": "m", "vector_length": 8, "url": spec["base_urls"][0], "error": None}

    monkeypatch.setattr(engine_probe, "probe", probe_while_the_target_moves)
    answer = probe_target.apply(args=[target.pk]).get()
    assert answer["base_urls"] == ["http://127.0.0.1:9300/v1"]
    target.refresh_from_db()
    assert target.last_probe is None


# ---- run start -----------------------------------------------------------------------------------------


def test_a_target_whose_last_test_failed_is_refused_with_the_reason(target, plan):
    failed(target)
    errors = run_start_errors(target, plan)
    (message,) = errors["target"]
    assert message.startswith("The target's last connection test failed: connection refused at "
                              "http://127.0.0.1:9100/v1.")
    assert f"/api/v1/targets/{target.pk}/probe/" in message


def test_the_run_page_refuses_it_and_queues_nothing(client, owner, target, plan, enqueued,
                                                     django_capture_on_commit_callbacks):
    failed(target)
    client.force_login(owner)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("run-create"), {"target": target.pk, "plan": plan.pk})
    assert response.status_code == 200
    assert "last connection test failed" in " ".join(response.context["form"].errors["target"])
    assert not Run.objects.exists() and enqueued == []


def test_the_api_refuses_it_and_queues_nothing(owner, target, plan, enqueued, django_capture_on_commit_callbacks):
    failed(target)
    with django_capture_on_commit_callbacks(execute=True):
        response = token_client(owner).post("/api/v1/runs/", {"target": target.pk, "plan": plan.pk})
    assert response.status_code == 400
    assert "last connection test failed" in response.json()["target"][0]
    assert not Run.objects.exists() and enqueued == []


def test_a_pending_retest_is_named(target, plan):
    failed(target)
    Target.objects.filter(pk=target.pk).update(probe_requested_at=timezone.now() + timezone.timedelta(seconds=1))
    target.refresh_from_db()
    assert "A new test is waiting for a worker" in run_start_errors(target, plan)["target"][0]


def test_a_failure_at_the_old_urls_does_not_refuse_the_new_ones(target, plan):
    failed(target)
    target.base_urls = [NEW_URL]
    target.save()
    assert run_start_errors(target, plan) == {}


def test_a_passed_test_or_none_starts(target, plan):
    assert run_start_errors(target, plan) == {}
    probed(target)
    assert run_start_errors(target, plan) == {}


# ---- the API's Test connection ---------------------------------------------------------------------------


def test_post_probe_queues_a_test_and_get_reads_its_answer(owner, target, enqueued):
    api = token_client(owner)
    url = f"/api/v1/targets/{target.pk}/probe/"
    response = api.post(url)
    assert response.status_code == 202, response.json()
    assert response.json()["pending"] is True and response.json()["queue"] == target.queue
    (call,) = enqueued
    assert call["name"] == "workers.tasks.probe_target" and call["args"] == [target.pk]
    assert call["queue"] == target.queue
    # The worker answers.
    Target.objects.filter(pk=target.pk).update(last_probe=target.probe_answer(
        ok=True, served_model="sim-embed", vector_length=64, at=timezone.now().isoformat()))
    state = api.get(url).json()
    assert state["pending"] is False and state["result"]["ok"] is True
    assert state["result"]["base_urls"] == target.base_urls and state["tested_at"]


def test_post_probe_answers_at_once_for_a_queue_the_team_may_not_use(owner, target, enqueued):
    Target.objects.filter(pk=target.pk).update(queue="gpu-host-7")
    response = token_client(owner).post(f"/api/v1/targets/{target.pk}/probe/")
    assert response.status_code == 200
    body = response.json()
    assert body["pending"] is False and body["result"]["ok"] is False
    assert "not granted to" in body["result"]["error"] and enqueued == []


def test_a_viewer_reads_but_cannot_test(viewer, target, enqueued):
    api = token_client(viewer)
    assert api.get(f"/api/v1/targets/{target.pk}/probe/").status_code == 200
    assert api.post(f"/api/v1/targets/{target.pk}/probe/").status_code == 403
    assert enqueued == []


def test_an_outsider_gets_404(outsider, target, enqueued):
    api = token_client(outsider)
    assert api.get(f"/api/v1/targets/{target.pk}/probe/").status_code == 404
    assert api.post(f"/api/v1/targets/{target.pk}/probe/").status_code == 404
    assert enqueued == []


@override_settings(EMBPERF_PROBE_RATE="2/minute")
def test_the_api_and_the_page_share_one_budget_per_user(client, owner, target, enqueued):
    client.force_login(owner)
    assert client.post(reverse("target-probe", args=[target.pk]), HTTP_ACCEPT="application/json").status_code == 200
    api = token_client(owner)
    url = f"/api/v1/targets/{target.pk}/probe/"
    assert api.post(url).status_code == 202
    refused = api.post(url)
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert "Too many connection tests: at most 2/minute per user" in refused.json()["detail"]
    assert len(enqueued) == 2
    page = client.post(reverse("target-probe", args=[target.pk]), HTTP_ACCEPT="application/json")
    assert page.status_code == 429


def test_the_schema_describes_the_probe_endpoint(owner):
    schema = token_client(owner).get("/api/schema/", HTTP_ACCEPT="application/json").json()
    operations = schema["paths"]["/api/v1/targets/{id}/probe/"]
    assert {"get", "post"} <= set(operations)
    assert {"202", "403", "429"} <= set(operations["post"]["responses"])
