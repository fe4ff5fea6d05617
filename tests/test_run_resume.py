"""Resume and queue again: an interrupted or failed run continues from its first unfinished level as
a new run linked to it; a run the broker refused answers 503 and can be queued again."""
import pytest
from django.urls import reverse

from portal.sweeps.models import Plan, Run
from portal.sweeps.services import RunStateError, resume_run
from tests.api_support import token_client
from tests.factories import level_docs, stored_run

pytestmark = pytest.mark.usefixtures("fresh_throttles")


@pytest.fixture
def four_levels(team):
    return Plan.objects.create(team=team, name="four", levels=[1, 4, 8, 16], warmup_s=0.5, duration_s=2, tokens=32,
                               dimensions=64, timeout_s=5)


@pytest.fixture
def sent(monkeypatch):
    from portal import taskqueue

    calls = []
    monkeypatch.setattr(taskqueue.app, "send_task", lambda *a, **kw: calls.append(kw))
    return calls


@pytest.fixture
def refused(monkeypatch):
    from portal import taskqueue

    def refuse(*args, **kwargs):
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    monkeypatch.setattr(taskqueue.app, "send_task", refuse)


@pytest.fixture
def interrupted(target, four_levels):
    """A run of four levels that finished two, then its worker died."""
    run = stored_run(target=target, plan=four_levels, docs=level_docs((1, 4)), label="mrr-128", status="interrupted",
                     server_config={"--max-running-requests": "128"})
    run.status_reason = "The worker stopped while this run was in progress."
    run.save()
    return run


def test_resume_creates_a_linked_run_with_the_remaining_levels(db, interrupted, owner, sent,
                                                              django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        new = resume_run(interrupted, user=owner)
    assert new.pk != interrupted.pk and new.status == "queued"
    assert new.resumed_from == interrupted
    assert new.plan_config["levels"] == [8, 16]
    assert {k: v for k, v in new.plan_config.items() if k != "levels"} == \
        {k: v for k, v in interrupted.plan_config.items() if k != "levels"}
    assert new.target_config == interrupted.target_config and new.server_config == interrupted.server_config
    assert new.label == "mrr-128" and new.plan_id == interrupted.plan_id
    assert [(run.pk, level.load) for run, level in new.earlier_levels()] == [(interrupted.pk, 1), (interrupted.pk, 4)]
    # Only the remaining levels are measured, and the time limits are sized for them.
    assert sent and sent[0]["args"] == [new.pk]
    assert sent[0]["soft_time_limit"] < 120 + 1.25 * 4 * (0.5 + 2 + 5)


def test_resume_starts_again_at_an_aborted_or_cancelled_level(db, target, four_levels, owner, sent):
    docs = level_docs((1, 4, 8))
    docs[1]["status"] = "cancelled"
    run = stored_run(target=target, plan=four_levels, docs=docs, status="failed")
    assert resume_run(run, user=owner).plan_config["levels"] == [4, 8, 16]


def test_a_resumed_run_that_fails_again_resumes_with_the_whole_chain(db, interrupted, owner, sent):
    second = resume_run(interrupted, user=owner)
    from portal.sweeps.documents import record_level

    record_level(second, level_docs((8,))[0])
    Run.objects.filter(pk=second.pk).update(status="failed")
    second.refresh_from_db()
    third = resume_run(second, user=owner)
    assert third.plan_config["levels"] == [16]
    assert [level.load for _, level in third.earlier_levels()] == [1, 4, 8]


@pytest.mark.parametrize("status", ["succeeded", "cancelled", "running", "queued"])
def test_only_interrupted_or_failed_runs_resume(db, target, four_levels, status):
    run = stored_run(target=target, plan=four_levels, docs=level_docs((1,)), status=status)
    with pytest.raises(RunStateError, match="only an interrupted or failed run can be resumed"):
        resume_run(run)


def test_a_run_with_every_level_finished_has_nothing_to_resume(db, target, plan):
    run = stored_run(target=target, plan=plan, docs=level_docs((1, 4)), status="failed")
    with pytest.raises(RunStateError, match="nothing left to measure"):
        resume_run(run)


def test_a_capacity_search_is_not_resumed(db, interrupted):
    interrupted.plan_config = {**interrupted.plan_config, "search": "capacity", "slo_p99_ms": 200}
    interrupted.save()
    with pytest.raises(RunStateError, match="capacity search, which cannot be resumed"):
        resume_run(interrupted)


def test_api_resume_answers_201_with_the_new_run(interrupted, owner, sent, django_capture_on_commit_callbacks):
    api = token_client(owner)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"/api/v1/runs/{interrupted.pk}/resume/")
    assert response.status_code == 201, response.json()
    body = response.json()
    new = Run.objects.get(pk=body["id"])
    assert response["Location"] == f"/api/v1/runs/{new.pk}/" and body["status"] == "queued"
    assert new.source == "api" and new.resumed_from_id == interrupted.pk
    detail = api.get(f"/api/v1/runs/{new.pk}/").json()
    assert detail["resumed_from"] == interrupted.pk
    assert detail["plan_config"]["levels"] == [8, 16]
    assert api.get(f"/api/v1/runs/{interrupted.pk}/").json()["links"]["resume"] == \
        f"/api/v1/runs/{interrupted.pk}/resume/"


def test_api_resume_of_a_succeeded_run_is_409_with_the_reason(target, plan, owner):
    run = stored_run(target=target, plan=plan, docs=level_docs((1, 4)))
    response = token_client(owner).post(f"/api/v1/runs/{run.pk}/resume/")
    assert response.status_code == 409
    assert "only an interrupted or failed run can be resumed" in response.json()["detail"]


def test_api_resume_needs_a_writing_role_and_hides_other_teams(interrupted, team, outsider, sent):
    from django.contrib.auth.models import User

    from portal.accounts.models import Membership

    viewer = User.objects.create_user("vera", password="password")
    Membership.objects.create(team=team, user=viewer, role="viewer")
    assert token_client(viewer).post(f"/api/v1/runs/{interrupted.pk}/resume/").status_code == 403
    assert token_client(outsider).post(f"/api/v1/runs/{interrupted.pk}/resume/").status_code == 404
    assert not sent


def test_resumed_export_names_the_original(db, interrupted, owner, sent):
    new = resume_run(interrupted, user=owner)
    doc = token_client(owner).get(f"/api/v1/runs/{new.pk}/export/").json()
    assert doc["run"]["resumed_from"] == {"id": interrupted.pk, "uuid": str(interrupted.uuid), "levels": [1, 4]}


def test_run_page_offers_resume_to_writers_and_shows_the_earlier_levels(client, interrupted, owner, team, sent,
                                                                        django_capture_on_commit_callbacks):
    client.force_login(owner)
    page = client.get(interrupted.get_absolute_url()).content.decode()
    assert 'id="resume-form"' in page and "Resume from level 8" in page
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("run-resume", args=[interrupted.pk]))
    new = Run.objects.get(resumed_from=interrupted)
    assert response.status_code == 302 and response["Location"] == new.get_absolute_url()
    page = client.get(new.get_absolute_url()).content.decode()
    assert f'href="{interrupted.get_absolute_url()}"' in page
    assert 'id="earlier-levels"' in page
    # A run that has been resumed points to its continuation instead of offering a second resume.
    page = client.get(interrupted.get_absolute_url()).content.decode()
    assert f'href="{new.get_absolute_url()}"' in page


def test_run_page_hides_resume_from_viewers(client, interrupted, team):
    from django.contrib.auth.models import User

    from portal.accounts.models import Membership

    viewer = User.objects.create_user("vera", password="password")
    Membership.objects.create(team=team, user=viewer, role="viewer")
    client.force_login(viewer)
    assert 'id="resume-form"' not in client.get(interrupted.get_absolute_url()).content.decode()
    assert client.post(reverse("run-resume", args=[interrupted.pk])).status_code == 403


# A run the broker refused --------------------------------------------------------------------------


# transactional_db: outside a transaction, as in production, the run is published as soon as it is saved,
# so the answer can tell whether the broker took it.
def test_api_start_with_the_broker_down_is_503_and_the_run_can_be_queued_again(
        transactional_db, target, plan, owner, monkeypatch):
    from portal import taskqueue

    def refuse(*args, **kwargs):
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    api = token_client(owner)
    monkeypatch.setattr(taskqueue.app, "send_task", refuse)
    response = api.post("/api/v1/runs/", {"target": target.pk, "plan": plan.pk})
    assert response.status_code == 503, response.json()
    body = response.json()
    assert "Connection refused" in body["detail"] and "CELERY_BROKER_URL" in body["detail"]
    run = Run.objects.get(pk=body["id"])
    assert run.status == "failed" and run.started is None and run.never_started
    assert body["links"]["enqueue"] == f"/api/v1/runs/{run.pk}/enqueue/"

    sent = []
    monkeypatch.setattr(taskqueue.app, "send_task", lambda *a, **kw: sent.append(kw))
    response = api.post(f"/api/v1/runs/{run.pk}/enqueue/")
    assert response.status_code == 200, response.json()
    run.refresh_from_db()
    assert run.status == "queued" and run.status_reason == "" and run.finished is None
    assert sent and sent[0]["args"] == [run.pk]


def test_enqueue_while_the_broker_is_still_down_is_503_again(transactional_db, target, plan, owner, refused):
    api = token_client(owner)
    run_id = api.post("/api/v1/runs/", {"target": target.pk, "plan": plan.pk}).json()["id"]
    response = api.post(f"/api/v1/runs/{run_id}/enqueue/")
    assert response.status_code == 503 and "Connection refused" in response.json()["detail"]
    assert Run.objects.get(pk=run_id).status == "failed"


def test_enqueue_of_a_run_a_worker_took_is_409(target, plan, owner, sent):
    run = stored_run(target=target, plan=plan, docs=level_docs((1,)), status="failed")
    response = token_client(owner).post(f"/api/v1/runs/{run.pk}/enqueue/")
    assert response.status_code == 409 and "Resume" in response.json()["detail"]
    assert not sent


def test_run_page_offers_queue_again_for_a_refused_run(client, owner, target, plan, refused, monkeypatch,
                                                       django_capture_on_commit_callbacks):
    client.force_login(owner)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("run-create"), {"target": target.pk, "plan": plan.pk})
    run = Run.objects.get()
    page = client.get(run.get_absolute_url()).content.decode()
    assert 'id="enqueue-form"' in page and 'id="resume-form"' not in page
    from portal import taskqueue

    sent = []
    monkeypatch.setattr(taskqueue.app, "send_task", lambda *a, **kw: sent.append(kw))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("run-enqueue", args=[run.pk]))
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == "queued" and sent


def test_a_resumed_runs_document_ingests_into_another_portal(db, interrupted, owner, other_team, outsider, sent):
    # The exported document of a resumed run is a valid embperf.run/1 document (resumed_from included).
    from portal.sweeps.documents import record_level

    new = resume_run(interrupted, user=owner)
    for doc in level_docs((8, 16)):
        record_level(new, doc)
    Run.objects.filter(pk=new.pk).update(status="succeeded")
    doc = token_client(owner).get(f"/api/v1/runs/{new.pk}/export/").json()
    assert doc["run"]["resumed_from"]["levels"] == [1, 4]
    doc["run"]["uuid"] = None
    response = token_client(outsider).post("/api/v1/ingest/", doc, format="json")
    assert response.status_code == 201, response.json()
