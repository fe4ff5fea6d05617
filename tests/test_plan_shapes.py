"""A shape axis in the portal: set on the plan page and through the API with the engine's rules, run by a
worker as a grid of shape × load, shown per shape on the run page, compared and judged cell by cell."""
import csv
import io
import re

import pytest
from django.urls import reverse

from benchmarks.simulator import running_simulator
from portal.history.comparison import build_comparison
from portal.history.timeline import build_history
from portal.sweeps.models import Plan, Run, Target
from portal.sweeps.services import RunStateError, create_run, resume_plan
from tests.api_support import token_client
from tests.test_front_plans import GOOD, post_plan
from workers.tasks import run_sweep


@pytest.mark.django_db
def test_a_tokens_axis_is_saved_as_numbers_and_shown_as_a_grid(client, owner, team):
    response = post_plan(client, owner, {**GOOD, "shape_field": "tokens", "shape_values": "32, 512 2048"})
    assert response.status_code == 302, response.context["form"].errors
    plan = Plan.objects.get(name="my sweep")
    assert (plan.shape_field, plan.shape_values) == ("tokens", [32, 512, 2048])
    assert plan.to_spec()["shape_values"] == [32, 512, 2048] and plan.cell_count() == 9
    page = client.get(plan.get_absolute_url()).content.decode()
    assert "Tokens per text: <span class=\"mono\">32, 512, 2048</span>" in page and "9 cells" in page
    form = client.get(reverse("plan-edit", args=[plan.pk])).context["form"]
    assert form["shape_values"].value() == "32, 512, 2048"


@pytest.mark.django_db
def test_shape_values_follow_the_plan_rule(client, owner, team):
    response = post_plan(client, owner, {**GOOD, "shape_field": "", "shape_values": "32, 64"})
    assert "need a shape field" in response.context["form"].errors["shape_values"][0]
    response = post_plan(client, owner, {**GOOD, "shape_field": "encoding", "shape_values": "float, base64"})
    assert response.status_code == 302
    assert Plan.objects.get(name="my sweep").shape_values == ["float", "base64"]


@pytest.mark.django_db
def test_the_api_sets_a_shape_axis(owner, team, fresh_throttles):
    api = token_client(owner)
    body = {"name": "batch", "levels": [1, 4], "shape_field": "batch", "shape_values": [1, 8, 32]}
    response = api.post("/api/v1/plans/", body, format="json")
    assert response.status_code == 201, response.json()
    assert {k: response.json()[k] for k in body} == body
    response = api.post("/api/v1/plans/", {**body, "name": "cap", "search": "capacity", "slo_p99_ms": 100},
                        format="json")
    assert response.status_code == 400 and "one capacity plan per shape" in str(response.json())


# 2 ms per batch and 40 µs per token: a 256-token text costs 10 ms of work, a 32-token one about 1.3 ms.
SERVER = {"batch_ms": 2, "token_us": 40, "batch_wait_ms": 1, "max_batch_tokens": 100_000, "native_dimensions": 16}


@pytest.fixture
def grid_runs(transactional_db, team, owner):
    """Two runs of a tokens axis (32, 256) at concurrency 1 and 2; the second against a server whose
    per-token cost doubled."""
    with running_simulator(**SERVER) as sim:
        target = Target.objects.create(team=team, name="sim", base_urls=[sim.base_url], model_name="sim-embed",
                                       engine="simulator")
        plan = Plan.objects.create(team=team, name="grid", levels=[1, 2], warmup_s=0.2, duration_s=1, tokens=64,
                                   dimensions=16, timeout_s=5, shape_field="tokens", shape_values=[32, 256])
        runs = []
        for token_us, label in ((40, "before"), (80, "slower")):
            sim.config.token_us = token_us
            run = create_run(target=target, plan=plan, label=label, user=owner)
            assert run_sweep.apply(args=[run.pk]).get() == Run.Status.SUCCEEDED
            runs.append(Run.objects.get(pk=run.pk))
    Run.objects.filter(pk=runs[0].pk).update(is_baseline=True)
    return [Run.objects.get(pk=r.pk) for r in runs]


def test_a_grid_is_stored_shown_compared_and_judged_cell_by_cell(grid_runs, client, owner):
    before, slower = grid_runs
    cells = [(lv.shape_value, lv.load) for lv in before.levels.order_by("index")]
    assert cells == [("32", 1), ("32", 2), ("256", 1), ("256", 2)]
    # The longer texts take longer: the run page shows it per shape.
    p50 = {lv.cell: lv.latency_p50_ms for lv in before.levels.all()}
    assert p50[("256", 1)] > 2 * p50[("32", 1)], p50

    client.force_login(owner)
    page = client.get(reverse("run-detail", args=[before.pk]))
    assert [b["value"] for b in page.context["shape_best"]] == [32, 256]
    charts = {c["id"]: c for c in page.context["charts"]}
    assert [d["label"] for d in charts["run-texts"]["datasets"]] == ["32", "256"]
    assert [d["label"] for d in charts["run-latency"]["datasets"]] == ["32", "256"]
    html = page.content.decode()
    assert 'id="shape-best"' in html and "<th>Tokens per text</th>" in html and 'id="run-shape-axis"' in html
    with pytest.raises(RunStateError, match="shape axis"):
        Run.objects.filter(pk=before.pk).update(status=Run.Status.FAILED)
        resume_plan(Run.objects.get(pk=before.pk))

    comparison = build_comparison([before, slower], before)
    assert comparison.cells == [("32", 1), ("32", 2), ("256", 1), ("256", 2)]
    rows = {(r["shape"], r["load"], r["metric"]): r for r in comparison.rows}
    assert rows[("256", 1, "p50_ms")]["cells"][1]["delta"]["verdict"] == "worse"
    lines = list(csv.reader(io.StringIO(comparison.to_csv())))
    assert lines[0][:3] == ["tokens", "concurrency", "metric"] and lines[1][:2] == ["32", "1"]
    assert comparison.to_markdown().startswith("| Tokens | Concurrency |")

    history = build_history(Run.objects.filter(pk__in=[before.pk, slower.pk]))
    assert history.loads == [("32", 1), ("32", 2), ("256", 1), ("256", 2)]
    flagged = next(p for p in history.points if p.id == slower.pk).regressions
    # Every cell got slower; the flag names the worst one by its shape and load.
    assert any(re.search(r" at (32|256) · [12] \(worse at \d of 4 levels\)", text) for text in flagged), flagged


@pytest.mark.django_db
def test_the_shape_presets_fill_the_form_and_save(client, owner, team):
    client.force_login(owner)
    for key, field in (("length-sweep", "tokens"), ("batch-sweep", "batch"), ("encoding", "encoding")):
        form = client.get(reverse("plan-create") + f"?preset={key}").context["form"]
        assert form["shape_field"].value() == field and form["description"].value().endswith(".")
        data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
        data["levels"] = form["levels"].field.prepare_value(form["levels"].value())
        data["shape_values"] = form["shape_values"].field.prepare_value(form["shape_values"].value())
        data = {k: v for k, v in data.items() if not isinstance(v, bool)}
        response = client.post(reverse("plan-create"), data)
        assert response.status_code == 302, (key, response.context["form"].errors)


def test_the_exports_name_each_cell(grid_runs, owner):
    before, _ = grid_runs
    api = token_client(owner)
    rows = list(csv.DictReader(io.StringIO(api.get(f"/api/v1/runs/{before.pk}/export/?format=csv").content.decode())))
    assert [(r["shape_field"], r["shape_value"], r["concurrency"]) for r in rows] == [
        ("tokens", "32", "1"), ("tokens", "32", "2"), ("tokens", "256", "1"), ("tokens", "256", "2")]
    markdown = api.get(f"/api/v1/runs/{before.pk}/export/?format=md").content.decode()
    assert "| Tokens · concurrency |" in markdown and "| 256 · 2 |" in markdown
