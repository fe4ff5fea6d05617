"""Teams, targets and plans through the API: CRUD, write-only API key, strict input, roles, other teams."""
import pytest

from portal.accounts.models import Membership
from portal.sweeps.models import Plan, Target
from tests.api_support import token_client

NEW_TARGET = {"name": "tei-a", "flavor": "tei", "base_urls": ["http://127.0.0.1:8080"], "model_name": "bge-large"}

pytestmark = pytest.mark.usefixtures("fresh_throttles")


@pytest.fixture
def api(owner):
    return token_client(owner)


@pytest.fixture
def viewer(team):
    from django.contrib.auth.models import User

    user = User.objects.create_user("vera", password="password")
    Membership.objects.create(team=team, user=user, role="viewer")
    return user


def test_teams_lists_own_teams_with_role(api, team, other_team):
    body = api.get("/api/v1/teams/").json()
    assert [(t["slug"], t["role"]) for t in body["results"]] == [(team.slug, "owner")]
    assert api.get(f"/api/v1/teams/{other_team.pk}/").status_code == 404


def test_create_target_and_api_key_is_write_only(api, team):
    response = api.post("/api/v1/targets/", {**NEW_TARGET, "api_key": "sk-123", "launch_config": {"--dtype": "bf16"}})
    assert response.status_code == 201, response.json()
    body = response.json()
    assert "api_key" not in body
    assert body["has_api_key"] is True
    assert body["team"] == team.pk
    target = Target.objects.get(pk=body["id"])
    assert target.api_key == "sk-123"
    assert target.launch_config == {"--dtype": "bf16"}
    detail = api.get(f"/api/v1/targets/{target.pk}/").json()
    assert "api_key" not in detail and "sk-123" not in str(detail)


def test_target_tokenizer_round_trips_and_reaches_the_engine_spec(api, team):
    response = api.post("/api/v1/targets/", {**NEW_TARGET, "tokenizer": "BAAI/bge-large-en-v1.5"})
    assert response.status_code == 201, response.json()
    assert response.json()["tokenizer"] == "BAAI/bge-large-en-v1.5"
    target = Target.objects.get(pk=response.json()["id"])
    assert target.to_spec()["tokenizer"] == "BAAI/bge-large-en-v1.5"
    api.patch(f"/api/v1/targets/{target.pk}/", {"tokenizer": ""})
    target.refresh_from_db()
    assert target.tokenizer == "" and "tokenizer" not in target.to_spec()


def test_patch_keeps_key_unless_given_and_empty_string_removes_it(api, target):
    target.api_key = "sk-old"
    target.save()
    assert api.patch(f"/api/v1/targets/{target.pk}/", {"engine_version": "0.5"}).status_code == 200
    target.refresh_from_db()
    assert (target.api_key, target.engine_version) == ("sk-old", "0.5")
    api.patch(f"/api/v1/targets/{target.pk}/", {"api_key": "sk-new"})
    target.refresh_from_db()
    assert target.api_key == "sk-new"
    api.patch(f"/api/v1/targets/{target.pk}/", {"api_key": ""})
    target.refresh_from_db()
    assert target.api_key == ""


def test_put_replaces_target(api, target):
    body = {**NEW_TARGET, "name": "renamed"}
    response = api.put(f"/api/v1/targets/{target.pk}/", body)
    assert response.status_code == 200, response.json()
    target.refresh_from_db()
    assert (target.name, target.flavor) == ("renamed", "tei")


def test_delete_target(api, target):
    assert api.delete(f"/api/v1/targets/{target.pk}/").status_code == 204
    assert not Target.objects.filter(pk=target.pk).exists()


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({**NEW_TARGET, "colour": "red"}, "colour", "Unknown field"),
        ({**NEW_TARGET, "id": 5}, "id", "read-only"),
        ({**NEW_TARGET, "base_urls": "http://x"}, "base_urls", "list"),
        ({**NEW_TARGET, "base_urls": ["ftp://x"]}, "base_urls", "http://"),
        ({**NEW_TARGET, "flavor": "grpc"}, "flavor", "not a valid choice"),
        ({**NEW_TARGET, "name": 12.5}, None, None),  # numbers are accepted as text by DRF
        ({**NEW_TARGET, "name": ["x"]}, "name", "Not a valid string"),
        ({**NEW_TARGET, "gpu_indices": "0,a"}, "gpu_indices", "whole numbers"),
        ({**NEW_TARGET, "queue": "bad queue!"}, "queue", "letters"),
        ({k: v for k, v in NEW_TARGET.items() if k != "model_name"}, "model_name", "required"),
        ({**NEW_TARGET, "gpu_source": "prometheus"}, "metrics_urls", "metrics URL"),
    ],
)
def test_bad_target_payloads_are_400_naming_the_field(api, body, field, words):
    response = api.post("/api/v1/targets/", body)
    if field is None:
        assert response.status_code == 201
        return
    assert response.status_code == 400
    errors = response.json()
    assert field in errors, errors
    assert words.lower() in " ".join(errors[field]).lower()
    assert not Target.objects.filter(name=NEW_TARGET["name"]).exists()


def test_body_that_is_not_an_object_is_400(api):
    response = api.post("/api/v1/targets/", [1, 2], format="json")
    assert response.status_code == 400
    assert Target.objects.count() == 0


def test_malformed_json_is_400_naming_the_body(api):
    response = api.generic("POST", "/api/v1/targets/", '{"name": "x",', content_type="application/json")
    assert response.status_code == 400
    assert "Malformed JSON" in response.json()["body"][0]


def test_nan_is_refused(api):
    response = api.generic("POST", "/api/v1/plans/", '{"name": "p", "levels": [NaN]}', content_type="application/json")
    assert response.status_code == 400
    assert "NaN" in response.json()["body"][0]


def test_oversized_body_is_400(api, settings):
    settings.EMBPERF_API_MAX_BODY_BYTES = 1000
    response = api.post("/api/v1/targets/", {**NEW_TARGET, "engine_version": "x" * 2000})
    assert response.status_code == 400
    assert "limit of 1,000 bytes" in response.json()["body"][0]
    assert not Target.objects.filter(name=NEW_TARGET["name"]).exists()


def test_create_plan_with_form_rules(api, team):
    response = api.post("/api/v1/plans/", {"name": "sweep", "levels": [1, 4, 8], "duration_s": 60, "tokens": 256})
    assert response.status_code == 201, response.json()
    plan = Plan.objects.get(pk=response.json()["id"])
    assert (plan.levels, plan.duration_s, plan.tokens, plan.warmup_s) == ([1, 4, 8], 60, 256, 5)
    assert response.json()["levels"] == [1, 4, 8]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "p", "levels": [1, 2.5]}, "levels"),
        ({"name": "p", "levels": [1, 1]}, "levels"),
        ({"name": "p", "levels": []}, "levels"),
        ({"name": "p", "levels": ["four"]}, "levels"),
        ({"name": "p", "levels": [1], "duration_s": "long"}, "duration_s"),
        ({"name": "p", "levels": [1], "abort_error_rate": 2}, "abort_error_rate"),
        ({"name": "p", "levels": [1], "input_mode": "corpus"}, "corpus_text"),
        ({"name": "p", "levels": [1], "keep_samples": "maybe"}, "keep_samples"),
        ({"name": "p", "levels": [1], "tokens": 0}, "tokens"),
    ],
)
def test_bad_plan_payloads_are_400_naming_the_field(api, team, body, field):
    response = api.post("/api/v1/plans/", body)
    assert response.status_code == 400
    assert field in response.json(), response.json()
    assert not Plan.objects.exists()


def test_patch_plan(api, plan):
    response = api.patch(f"/api/v1/plans/{plan.pk}/", {"levels": [2, 4], "keep_samples": True})
    assert response.status_code == 200, response.json()
    plan.refresh_from_db()
    assert (plan.levels, plan.keep_samples, plan.name) == ([2, 4], True, "smoke")


def test_outsider_gets_404_for_another_teams_target_and_plan(outsider, target, plan):
    api = token_client(outsider)
    assert api.get("/api/v1/targets/").json()["results"] == []
    for url in (f"/api/v1/targets/{target.pk}/", f"/api/v1/plans/{plan.pk}/"):
        assert api.get(url).status_code == 404
        assert api.patch(url, {"name": "mine"}).status_code == 404
        assert api.delete(url).status_code == 404
    target.refresh_from_db()
    assert target.name == "sim"


def test_outsider_cannot_create_in_another_team(outsider, team):
    api = token_client(outsider)
    response = api.post("/api/v1/targets/", {**NEW_TARGET, "team": team.pk})
    assert response.status_code == 400
    assert "team" in response.json()
    assert not Target.objects.filter(team=team).exists()


def test_viewer_can_read_but_not_change(viewer, target):
    api = token_client(viewer)
    assert api.get(f"/api/v1/targets/{target.pk}/").status_code == 200
    assert api.patch(f"/api/v1/targets/{target.pk}/", {"name": "x"}).status_code == 403
    assert api.delete(f"/api/v1/targets/{target.pk}/").status_code == 403
    response = api.post("/api/v1/targets/", NEW_TARGET)
    assert response.status_code == 400 and "team" in response.json()


def test_team_is_required_with_several_writable_teams(api, owner, other_team):
    Membership.objects.create(team=other_team, user=owner, role="member")
    response = api.post("/api/v1/targets/", NEW_TARGET)
    assert response.status_code == 400
    assert "several teams" in response.json()["team"][0]
    response = api.post("/api/v1/targets/", {**NEW_TARGET, "team": other_team.pk})
    assert response.status_code == 201
    assert Target.objects.get(name="tei-a").team == other_team
