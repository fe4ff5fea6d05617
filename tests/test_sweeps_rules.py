"""The rules of a target and a plan (portal/sweeps/rules.py): the page's form and the API refuse the same
values with the same messages, because both map the same rules onto their fields."""
import pytest

from portal.front.forms import PlanForm, TargetForm
from portal.sweeps import rules
from portal.sweeps.models import QueueGrant, Target
from tests.api_support import token_client

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_throttles")]

API_TARGET = {"name": "t", "flavor": "openai", "base_urls": ["http://127.0.0.1:8080"], "model_name": "m"}
PAGE_TARGET = {**API_TARGET, "base_urls": "http://127.0.0.1:8080", "engine": "other", "gpu_source": "none",
               "queue": "sweeps"}

# (field, API value, page value): each is refused.
BAD_TARGET_VALUES = [
    ("base_urls", ["127.0.0.1:8080"], "127.0.0.1:8080"),
    ("base_urls", ["http://a:8080", "http://a:8080/"], "http://a:8080\nhttp://a:8080/"),
    ("base_urls", ["http://a:port"], "http://a:port"),
    ("base_urls", [], ""),
    ("base_urls", ["http://169.254.169.254/"], "http://169.254.169.254/"),
    ("metrics_urls", ["ftp://m"], "ftp://m"),
    ("gpu_indices", "0,a", "0,a"),
    ("gpu_indices", "1, 1", "1, 1"),
    ("queue", "bad queue!", "bad queue!"),
    ("queue", "gpu-host-9", "gpu-host-9"),
]


def page_errors(form_class, data, user, instance=None) -> dict:
    form = form_class(data=data, instance=instance, user=user)
    assert not form.is_valid()
    return {name: list(messages) for name, messages in form.errors.items()}


@pytest.mark.parametrize(("field", "api_value", "page_value"), BAD_TARGET_VALUES)
def test_a_bad_target_value_gets_the_same_message_from_the_page_and_the_api(owner, team, field, api_value,
                                                                             page_value):
    page = page_errors(TargetForm, {**PAGE_TARGET, field: page_value}, owner)
    response = token_client(owner).post("/api/v1/targets/", {**API_TARGET, field: api_value})
    assert response.status_code == 400
    assert response.json()[field] == page[field]
    assert not Target.objects.exists()


def test_prometheus_without_metrics_urls_is_refused_alike(owner, team):
    page = page_errors(TargetForm, {**PAGE_TARGET, "gpu_source": "prometheus"}, owner)
    api = token_client(owner).post("/api/v1/targets/", {**API_TARGET, "gpu_source": "prometheus"}).json()
    assert api["metrics_urls"] == page["metrics_urls"] == [
        "GPU telemetry from Prometheus needs at least one metrics URL."]


def test_a_granted_queue_is_accepted_by_both(owner, team):
    QueueGrant.objects.create(team=team, queue="gpu-host-9")
    assert TargetForm(data={**PAGE_TARGET, "queue": "gpu-host-9"}, user=owner).is_valid()
    response = token_client(owner).post("/api/v1/targets/", {**API_TARGET, "queue": "gpu-host-9"})
    assert response.status_code == 201, response.json()


def test_the_key_binding_rule_speaks_alike(owner, target):
    target.api_key = "sk-1"
    target.save()
    moved = {"base_urls": "http://10.9.9.9:8000"}
    data = {**PAGE_TARGET, "name": target.name, **moved, "api_key": ""}
    page = page_errors(TargetForm, data, owner, instance=target)
    response = token_client(owner).patch(f"/api/v1/targets/{target.pk}/", {"base_urls": ["http://10.9.9.9:8000"]})
    assert response.status_code == 400
    assert response.json()["api_key"] == page["api_key"]
    assert "http://10.9.9.9:8000" in page["api_key"][0]
    target.refresh_from_db()
    assert target.api_key == "sk-1" and target.base_urls != ["http://10.9.9.9:8000"]


def test_a_new_key_with_the_new_server_is_accepted(owner, target):
    target.api_key = "sk-1"
    target.save()
    response = token_client(owner).patch(f"/api/v1/targets/{target.pk}/",
                                         {"base_urls": ["http://10.9.9.9:8000"], "api_key": "sk-2"})
    assert response.status_code == 200, response.json()
    target.refresh_from_db()
    assert (target.api_key, target.base_urls) == ("sk-2", ["http://10.9.9.9:8000"])


def test_a_launch_config_key_that_is_not_one_is_refused_not_mangled(owner, team):
    response = token_client(owner).post("/api/v1/targets/", {**API_TARGET, "launch_config": {"a b": "1"}})
    assert response.status_code == 400
    assert response.json()["launch_config"] == [rules.config_key_error("a b")]


PAGE_PLAN = {"name": "p", "mode": "closed", "levels": "1, 4", "arrival": "constant", "warmup_s": 1,
             "duration_s": 5, "tokens": 32, "batch": 1, "encoding": "float", "timeout_s": 10,
             "abort_error_rate": 0.5, "abort_window_s": 10, "input_mode": "unique", "processes": 1}

BAD_PLAN_VALUES = [
    ("levels", [1, 2.5], "1, 2.5"),
    ("levels", [1, 1], "1, 1"),
    ("levels", [], ""),
    ("tokens", 0, 0),
    ("abort_error_rate", 2, 2),
    ("duration_s", -1, -1),
    ("processes", 10_000, 10_000),
]


@pytest.mark.parametrize(("field", "api_value", "page_value"), BAD_PLAN_VALUES)
def test_a_bad_plan_value_gets_the_same_message_from_the_page_and_the_api(owner, team, field, api_value,
                                                                         page_value):
    page = page_errors(PlanForm, {**PAGE_PLAN, field: page_value}, owner)
    response = token_client(owner).post("/api/v1/plans/", {"name": "p", "levels": [1, 4], field: api_value})
    assert response.status_code == 400
    assert response.json()[field] == page[field]


def test_a_corpus_plan_without_texts_is_refused_alike(owner, team):
    page = page_errors(PlanForm, {**PAGE_PLAN, "input_mode": "corpus", "corpus_text": "\n  \n"}, owner)
    api = token_client(owner).post("/api/v1/plans/", {"name": "p", "levels": [1], "input_mode": "corpus",
                                                      "corpus_text": "\n  \n"}).json()
    assert api["corpus_text"] == page["corpus_text"]


def test_whole_levels_are_stored_as_whole_numbers(owner, team):
    response = token_client(owner).post("/api/v1/plans/", {"name": "p", "levels": [1.0, 4.0]})
    assert response.status_code == 201, response.json()
    from portal.sweeps.models import Plan

    levels = Plan.objects.get().levels
    assert levels == [1, 4] and all(isinstance(v, int) for v in levels)
