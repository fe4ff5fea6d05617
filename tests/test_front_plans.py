"""Plan pages: presets, create with bad input (nothing saved), edit, team scoping."""
import pytest
from django.urls import reverse

from portal.sweeps.models import Plan

pytestmark = pytest.mark.django_db

GOOD = {
    "name": "my sweep",
    "description": "",
    "mode": "closed",
    "levels": "1, 4, 8",
    "arrival": "poisson",
    "max_in_flight": "",
    "warmup_s": "2",
    "duration_s": "30",
    "tokens": "512",
    "batch": "1",
    "dimensions": "1024",
    "encoding": "float",
    "timeout_s": "30",
    "abort_error_rate": "0.5",
    "abort_window_s": "10",
    "slo_p99_ms": "",
    "input_mode": "unique",
    "corpus_text": "",
    "processes": "1",
}


def post_plan(client, user, data, url=None):
    client.force_login(user)
    return client.post(url or reverse("plan-create"), data)


def test_create_plan(client, owner, team):
    response = post_plan(client, owner, GOOD)
    plan = Plan.objects.get(name="my sweep")
    assert response.status_code == 302 and response["Location"] == plan.get_absolute_url()
    assert plan.team == team and plan.levels == [1, 4, 8] and plan.dimensions == 1024
    assert plan.to_spec()["levels"] == [1, 4, 8]


def test_blank_dimensions_means_model_default(client, owner, team):
    post_plan(client, owner, {**GOOD, "dimensions": ""})
    assert Plan.objects.get(name="my sweep").dimensions is None


def test_open_loop_accepts_fractional_rates(client, owner, team):
    post_plan(client, owner, {**GOOD, "mode": "open", "levels": "0.5, 2, 10"})
    assert Plan.objects.get(name="my sweep").levels == [0.5, 2, 10]


def test_classic_preset_fills_the_form(client, owner, team):
    client.force_login(owner)
    response = client.get(reverse("plan-create") + "?preset=classic")
    form = response.context["form"]
    assert form["levels"].value() == "1, 4, 8, 16, 32, 64"
    assert form["duration_s"].value() == 120 and form["tokens"].value() == 512
    assert form["dimensions"].value() is None and form["timeout_s"].value() == 30
    assert 'value="1, 4, 8, 16, 32, 64"' in response.content.decode()


def test_smoke_preset_is_short(client, owner, team):
    client.force_login(owner)
    form = client.get(reverse("plan-create") + "?preset=smoke").context["form"]
    assert form["duration_s"].value() <= 10 and form["levels"].value() == "1, 4"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("levels", "1,4,abc", "“abc” is not a number"),
        ("levels", "0", "Levels must be greater than zero; 0 is not."),
        ("levels", "-4", "Levels must be greater than zero; -4 is not."),
        ("levels", "", "Enter at least one level"),
        ("levels", "   ", "Enter at least one level"),
        ("levels", "1, 4, 4", "Level 4 appears twice"),
        ("levels", "1, 2.5", "whole number; 2.5 is not"),
        ("levels", "1, 5000", "above this installation's maximum of 4096"),
        ("levels", ", ".join(str(i) for i in range(1, 40)), "At most 32 levels"),
        ("levels", "1, nan", "not a finite number"),
        ("duration_s", "0", "The measured duration must be greater than 0 s"),
        ("duration_s", "-5", "The measured duration must be greater than 0 s"),
        ("duration_s", "99999", "may be at most 3600 s on this installation (EMBPERF_MAX_LEVEL_SECONDS)"),
        ("warmup_s", "-1", "The warm-up must be at least 0 s"),
        ("tokens", "0", "Tokens per text must be at least 1"),
        ("dimensions", "0", "Dimensions must be at least 1"),
        ("batch", "0", "Texts per request must be at least 1"),
        ("timeout_s", "0", "The request timeout must be greater than 0 s"),
        ("abort_error_rate", "1.5", "The abort error rate may be at most 1"),
        ("slo_p99_ms", "-3", "The latency SLO must be greater than 0 ms"),
        ("max_in_flight", "99999", "may be at most 4096 on this installation"),
        ("input_mode", "corpus", "The corpus input needs texts"),
        ("name", "", "This field is required"),
    ],
)
def test_bad_input_gives_message_and_saves_nothing(client, owner, team, field, value, message):
    before = Plan.objects.count()
    response = post_plan(client, owner, {**GOOD, field: value})
    assert response.status_code == 200
    target_field = "corpus_text" if field == "input_mode" else field
    errors = response.context["form"].errors
    assert target_field in errors, errors
    assert message in " ".join(errors[target_field])
    html = response.content.decode()
    assert 'class="field has-error"' in html and "Nothing was saved" in html
    assert Plan.objects.count() == before


def test_limits_follow_settings(client, owner, team, settings):
    settings.EMBPERF_MAX_CONCURRENCY = 32
    settings.EMBPERF_MAX_LEVELS = 2
    errors = post_plan(client, owner, {**GOOD, "levels": "1, 64"}).context["form"].errors
    assert "maximum of 32" in errors["levels"][0]
    errors = post_plan(client, owner, {**GOOD, "levels": "1, 2, 3"}).context["form"].errors
    assert "At most 2 levels per plan" in errors["levels"][0]
    assert not Plan.objects.filter(name="my sweep").exists()


def test_edit_plan_keeps_old_runs_snapshot(client, owner, target, plan):
    from portal.sweeps.services import create_run

    run = create_run(target=target, plan=plan)
    client.force_login(owner)
    assert 'value="1, 4"' in client.get(reverse("plan-edit", args=[plan.pk])).content.decode()
    response = client.post(reverse("plan-edit", args=[plan.pk]), {**GOOD, "name": "smoke", "levels": "2, 8"})
    assert response.status_code == 302
    plan.refresh_from_db()
    run.refresh_from_db()
    assert plan.levels == [2, 8] and run.plan_config["levels"] == [1, 4]


def test_plan_list_and_detail(client, owner, plan):
    client.force_login(owner)
    assert "smoke" in client.get(reverse("plan-list")).content.decode()
    page = client.get(plan.get_absolute_url()).content.decode()
    assert "1, 4" in page and "Start a run" in page


@pytest.mark.parametrize("name", ["plan-detail", "plan-edit"])
def test_outsider_gets_404(client, outsider, plan, name):
    client.force_login(outsider)
    assert client.get(reverse(name, args=[plan.pk])).status_code == 404
    assert client.post(reverse(name, args=[plan.pk]), GOOD).status_code == 404
    plan.refresh_from_db()
    assert plan.name == "smoke"
