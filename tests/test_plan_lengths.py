"""Length distributions in the portal: set on the page and through the API with the engine's rules, shown on
the plan page, and a run's reported token counts and answer costs on the run page and in the CSV."""
import csv
import io

import pytest
from django.urls import reverse

from benchmarks.simulator import running_simulator
from portal.sweeps.models import Plan, Run, Target
from portal.sweeps.services import create_run
from tests.api_support import token_client
from tests.test_front_plans import GOOD, post_plan
from workers.tasks import run_sweep


@pytest.mark.django_db
def test_a_lognormal_plan_shows_its_median_and_spread(client, owner, team):
    response = post_plan(client, owner, {**GOOD, "length": "lognormal", "tokens": "256", "tokens_sigma": ""})
    assert response.status_code == 302, response.context["form"].errors
    plan = Plan.objects.get(name="my sweep")
    assert plan.to_spec()["length"] == "lognormal"
    page = client.get(plan.get_absolute_url()).content.decode()
    assert "log-normal, median 256, sigma 0.5" in page, "the engine's default spread is shown"


@pytest.mark.django_db
def test_uniform_bounds_are_checked_by_the_plan_rule(client, owner, team):
    response = post_plan(client, owner, {**GOOD, "length": "uniform", "tokens_min": "900", "tokens_max": "100"})
    assert response.status_code == 200
    assert "tokens_min at most tokens_max" in response.context["form"].errors["tokens_min"][0]
    response = post_plan(client, owner, {**GOOD, "length": "uniform", "tokens_min": "100", "tokens_max": "900"})
    assert response.status_code == 302
    assert Plan.objects.get(name="my sweep").length_text() == "uniform 100 to 900"


@pytest.mark.django_db
def test_a_drawn_length_with_a_corpus_is_refused_on_the_length(client, owner, team):
    response = post_plan(client, owner, {**GOOD, "length": "lognormal", "input_mode": "corpus",
                                         "corpus_text": "one\ntwo"})
    assert response.status_code == 200
    assert "applies to unique texts only" in response.context["form"].errors["length"][0]


@pytest.mark.django_db
def test_the_api_sets_a_length_distribution(owner, team, fresh_throttles):
    api = token_client(owner)
    body = {"name": "mix", "levels": [1, 4], "length": "uniform", "tokens_min": 64, "tokens_max": 1024}
    response = api.post("/api/v1/plans/", body, format="json")
    assert response.status_code == 201, response.json()
    assert {k: response.json()[k] for k in body} == body
    response = api.post("/api/v1/plans/", {**body, "name": "bad", "tokens_sigma": 0.4}, format="json")
    assert response.status_code == 400 and "tokens_sigma" in response.json()


def test_a_run_reports_the_lengths_it_sent_and_what_its_answers_cost(transactional_db, team, owner, client):
    with running_simulator(native_dimensions=64) as sim:
        target = Target.objects.create(team=team, name="sim", base_urls=[sim.base_url], model_name="sim-embed",
                                       engine="simulator")
        plan = Plan.objects.create(team=team, name="mix", levels=[2], warmup_s=0.2, duration_s=1, tokens=128,
                                   length="lognormal", tokens_sigma=0.5, dimensions=64, timeout_s=5)
        run = create_run(target=target, plan=plan, label="mix", user=owner)
        assert run_sweep.apply(args=[run.pk]).get() == Run.Status.SUCCEEDED
    level = run.levels.get()
    sent = level.data["input_tokens"]
    assert sent["n"] > 0 and sent["p50"] < sent["p90"] <= sent["max"]
    client.force_login(owner)
    page = client.get(reverse("run-detail", args=[run.pk])).content.decode()
    assert "Tokens/text sent" in page and "Client decode" in page and "Answer size" in page
    rows = list(csv.DictReader(io.StringIO(
        token_client(owner).get(f"/api/v1/runs/{run.pk}/export/?format=csv").content.decode())))
    assert float(rows[0]["input_tokens_p50"]) == sent["p50"]
    assert float(rows[0]["answer_bytes_mean"]) == level.data["answers"]["bytes_mean"] > 64 * 4
