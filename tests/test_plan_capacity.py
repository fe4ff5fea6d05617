"""A capacity plan in the portal: set on the page and through the API, checked by the plan rule, shown
on the plan page, and run by a worker task against the simulator to a stored answer."""
import pytest
from django.urls import reverse

from benchmarks import capacity
from benchmarks.simulator import running_simulator
from portal.sweeps.models import Plan, Run, Target
from portal.sweeps.services import create_run
from tests.api_support import token_client
from tests.test_front_plans import GOOD, post_plan
from workers.tasks import run_sweep

CAPACITY = {**GOOD, "name": "capacity", "search": "capacity", "mode": "open", "levels": "", "slo_p99_ms": "300",
            "capacity_precision": "0.1", "capacity_trials": "2", "capacity_budget_s": "", "capacity_max_load": ""}


@pytest.mark.django_db
def test_a_capacity_plan_needs_no_levels_and_says_what_it_searches_for(client, owner, team):
    response = post_plan(client, owner, CAPACITY)
    plan = Plan.objects.get(name="capacity")
    assert response.status_code == 302
    assert plan.search == "capacity" and plan.levels == [] and plan.capacity_precision == 0.1
    spec = plan.to_spec()
    assert spec["search"] == "capacity" and spec["slo_p99_ms"] == 300 and spec["capacity_trials"] == 2
    page = client.get(plan.get_absolute_url()).content.decode()
    assert "Capacity: the highest arrival rate that meets the SLO, to 10 %, 2 trials at the boundary" in page
    # No budget: bounded by this installation's run limit, never "inf".
    from django.conf import settings
    assert plan.expected_seconds() == settings.EMBPERF_MAX_RUN_SECONDS
    assert "inf" not in page.split('id="plan-search"')[1].split("</dl>")[0]
    assert "p99 ≤ 300 ms · error rate ≤ 1.00%" in page, "the search's default error rate is shown"


@pytest.mark.django_db
def test_a_capacity_plan_without_an_slo_is_refused_with_the_reason(client, owner, team):
    response = post_plan(client, owner, {**CAPACITY, "slo_p99_ms": ""})
    assert response.status_code == 200 and not Plan.objects.filter(name="capacity").exists()
    errors = response.context["form"].errors
    assert "A capacity search needs an SLO" in errors["slo_p99_ms"][0]


@pytest.mark.django_db
def test_an_error_rate_alone_is_an_slo_a_capacity_search_can_use(client, owner, team):
    """The engine's rule: a latency limit or an error rate; the portal is no stricter."""
    response = post_plan(client, owner, {**CAPACITY, "slo_p99_ms": "", "slo_error_rate": "0.05"})
    assert response.status_code == 302, response.context["form"].errors
    assert Plan.objects.get(name="capacity").slo_lines() == ["error rate ≤ 5.00%"]


@pytest.mark.django_db
def test_a_levels_plan_still_needs_levels(client, owner, team):
    response = post_plan(client, owner, {**GOOD, "levels": ""})
    assert response.status_code == 200
    assert response.context["form"].errors["levels"] == ["Enter at least one level, e.g. 1, 4, 8, 16."]


@pytest.mark.django_db
def test_a_capacity_threshold_naming_levels_is_refused_with_why(client, owner, team):
    response = post_plan(client, owner, {**CAPACITY, "thresholds": "p99_ms <= 500 at 16"})
    message = response.context["form"].errors["thresholds"][0]
    assert "A capacity search chooses its own loads" in message and "its levels: 1" not in message
    response = post_plan(client, owner, {**CAPACITY, "thresholds": "p99_ms <= 500"})
    assert response.status_code == 302


@pytest.mark.django_db
def test_a_form_without_the_search_settings_keeps_the_defaults(client, owner, team):
    data = {key: value for key, value in GOOD.items() if not key.startswith(("search", "capacity_"))}
    assert post_plan(client, owner, data).status_code == 302
    plan = Plan.objects.get(name="my sweep")
    assert (plan.search, plan.capacity_precision, plan.capacity_trials) == ("levels", 0.05, 2)


@pytest.mark.django_db
def test_the_api_sets_and_answers_every_slo_and_search_field(owner, team, fresh_throttles):
    api = token_client(owner)
    body = {"name": "cap", "search": "capacity", "mode": "closed", "slo_p90_ms": 120, "slo_error_rate": 0.02,
            "slo_goodput_share": 0.9, "capacity_precision": 0.1, "capacity_trials": 3, "capacity_budget_s": 600,
            "capacity_max_load": 64}
    response = api.post("/api/v1/plans/", body, format="json")
    assert response.status_code == 201, response.json()
    answer = response.json()
    assert {key: answer[key] for key in body} == body and answer["levels"] == []
    response = api.post("/api/v1/plans/", {**body, "name": "cap2", "capacity_max_load": 2.5}, format="json")
    assert response.status_code == 400
    assert response.json()["capacity_max_load"] == ["Concurrency is a whole number; 2.5 is not."]
    response = api.post("/api/v1/plans/", {"name": "lv", "levels": []}, format="json")
    assert response.json()["levels"] == ["Enter at least one level, e.g. 1, 4, 8, 16."]


# Batches of at most 10 requests of 32 tokens, 200 ms each: the server holds 50 req/s.
SERVER = {"batch_ms": 200, "batch_wait_ms": 1, "token_us": 0, "max_batch_tokens": 336, "native_dimensions": 16}


def test_a_worker_runs_a_portal_capacity_plan_to_its_answer(transactional_db, team, monkeypatch):
    # The shared test host must not end the search as client-bound (tests/test_engine_capacity.py
    # tests that path); here the answer is the server's.
    monkeypatch.setattr(capacity, "client_bound", lambda level: False)
    with running_simulator(**SERVER) as sim:
        target = Target.objects.create(team=team, name="sim", base_urls=[sim.base_url], model_name="sim-embed",
                                       engine="simulator")
        plan = Plan.objects.create(team=team, name="cap", search="capacity", mode="open", arrival="constant",
                                   levels=[], warmup_s=0.3, duration_s=1, tokens=32, dimensions=16, timeout_s=5,
                                   input_mode="repeat", abort_error_rate=1.0, slo_p99_ms=800,
                                   capacity_max_load=20)
        run = create_run(target=target, plan=plan, label="cap")
        assert run_sweep.apply(args=[run.pk]).get() == Run.Status.SUCCEEDED
    run.refresh_from_db()
    answer = run.document["capacity"]
    assert answer["status"] == "max_load" and answer["load"] == 20, answer
    assert run.document["plan"]["search"] == "capacity"
    steps = [level.data["capacity_step"] for level in run.levels.order_by("index")]
    assert steps[0]["phase"] == "synchronous" and len(steps) == answer["levels_run"]
    assert run.judge() == "passed", run.verdict_reasons


@pytest.mark.django_db
def test_every_preset_and_demo_plan_meets_the_plan_rule(team):
    from portal.front.presets import PLAN_PRESETS, PRESET_LABELS
    from portal.sweeps.bounds import plan_field_errors
    from portal.sweeps.management.commands.embperf_bootstrap import DEMO_PLANS

    assert set(PRESET_LABELS) == set(PLAN_PRESETS)
    for spec in [*PLAN_PRESETS.values(), *DEMO_PLANS]:
        plan = Plan(team=team, **spec)
        assert plan_field_errors(plan.to_spec()) == {}, spec["name"]
        assert spec["description"].strip(), "each says what it answers"


@pytest.mark.django_db
def test_the_capacity_preset_fills_the_form(client, owner, team):
    client.force_login(owner)
    form = client.get(reverse("plan-create") + "?preset=capacity").context["form"]
    assert form["search"].value() == "capacity" and form["slo_p99_ms"].value() == 500
