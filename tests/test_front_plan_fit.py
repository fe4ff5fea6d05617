"""Plans that fit the target: the presets run on any model, and a plan the target's last probe says
it cannot serve is flagged, with the figures, before anything is queued (start page and API)."""
import pytest
from django.urls import reverse

from benchmarks.simulator import running_simulator
from benchmarks.sweep import run_sweep
from portal.front.presets import PLAN_PRESETS
from portal.sweeps.models import Plan, Run
from tests.api_support import token_client

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_throttles")]

# What "Test connection" recorded for all-MiniLM-L6-v2 behind an OpenAI-compatible server.
PROBE_384 = {"ok": True, "served_model": "sim-embed", "vector_length": 384, "prompt_tokens": 14,
             "latency_ms": 4.2, "max_input_tokens": 512, "status": 200, "error": None, "hint": None}


@pytest.fixture
def small_model(target):
    target.last_probe = target.probe_answer(**PROBE_384)
    target.save()
    return target


def preset_plan(team, key, **changes) -> Plan:
    fields = {k: v for k, v in PLAN_PRESETS[key].items()}
    return Plan.objects.create(team=team, **{**fields, **changes})


def _start(client, target, plan, capture):
    with capture(execute=True):
        return client.post(reverse("run-create"), {"target": target.pk, "plan": plan.pk, "label": "",
                                                   "notes": "", "server_config": ""})


@pytest.mark.parametrize("key", ["smoke", "classic", "open-loop"])
def test_presets_send_no_dimensions(key):
    assert PLAN_PRESETS[key]["dimensions"] is None


@pytest.mark.parametrize("key", ["smoke", "classic"])
def test_presets_start_on_a_384_dimension_model(client, owner, team, small_model, enqueued, key,
                                                django_capture_on_commit_callbacks):
    client.force_login(owner)
    plan = preset_plan(team, key)
    response = _start(client, small_model, plan, django_capture_on_commit_callbacks)
    assert response.status_code == 302, response.context["form"].errors
    assert Run.objects.get().status == "queued" and len(enqueued) == 1


@pytest.mark.parametrize("key, shorten", [("smoke", {}), ("classic", {"levels": [1], "warmup_s": 0.2,
                                                                         "duration_s": 1})])
def test_presets_run_on_a_384_dimension_model(team, key, shorten):
    # The plan as the worker hands it to the engine: no dimensions field, so the model's own 384.
    spec = preset_plan(team, key).to_spec()
    spec.update(shorten)
    with running_simulator(native_dimensions=384, batch_ms=0, token_us=0, batch_wait_ms=0) as sim:
        doc = run_sweep({"name": "sim", "flavor": "openai", "base_urls": [sim.base_url], "model": "sim-embed"}, spec)
    assert doc["run"]["status"] == "succeeded"
    assert doc["probe"]["vector_length"] == 384
    assert all(level["requests_ok"] > 0 and level["requests_failed"] == 0 for level in doc["levels"])


def test_more_dimensions_than_the_probe_saw_is_flagged_before_queueing(client, owner, team, small_model, enqueued,
                                                                       django_capture_on_commit_callbacks):
    client.force_login(owner)
    plan = preset_plan(team, "classic", dimensions=1024)
    response = _start(client, small_model, plan, django_capture_on_commit_callbacks)
    assert response.status_code == 200
    errors = " ".join(response.context["form"].errors["plan"])
    assert "asks for 1,024 dimensions" in errors and "saw vectors of 384" in errors
    assert "1,024 dimensions" in response.content.decode()
    assert Run.objects.count() == 0 and enqueued == []


def test_longer_texts_than_the_server_accepts_are_flagged(client, owner, team, small_model, enqueued,
                                                          django_capture_on_commit_callbacks):
    client.force_login(owner)
    plan = preset_plan(team, "classic", tokens=1024)
    response = _start(client, small_model, plan, django_capture_on_commit_callbacks)
    assert response.status_code == 200
    assert "1,024-token texts, but the server accepts at most 512" in " ".join(response.context["form"].errors["plan"])
    assert Run.objects.count() == 0 and enqueued == []


def test_api_flags_the_plan_before_queueing(owner, team, small_model, enqueued):
    api = token_client(owner)
    plan = preset_plan(team, "classic", dimensions=1024)
    response = api.post("/api/v1/runs/", {"target": small_model.pk, "plan": plan.pk}, format="json")
    assert response.status_code == 400
    assert "1,024 dimensions" in str(response.json()) and "384" in str(response.json())
    assert Run.objects.count() == 0 and enqueued == []


def test_without_a_probe_nothing_is_flagged(client, owner, team, target, enqueued, django_capture_on_commit_callbacks):
    client.force_login(owner)
    plan = preset_plan(team, "classic", dimensions=1024)
    assert _start(client, target, plan, django_capture_on_commit_callbacks).status_code == 302


def test_the_demo_plans_fit_a_384_dimension_model(db):
    from django.core.management import call_command

    from portal.accounts.models import Team
    from portal.sweeps.services import plan_misfits

    call_command("embperf_bootstrap")
    demo = Team.objects.get(name="Demo")
    target = demo.targets.get()
    target.last_probe = target.probe_answer(**PROBE_384)
    for name in ("Smoke", "Classic sweep"):
        plan = demo.plans.get(name=name)
        assert plan.to_spec()["dimensions"] is None
        assert plan_misfits(target, plan) == []
