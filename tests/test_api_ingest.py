"""POST /api/v1/ingest/: a result document joins history; bad documents are 400, naming the field, nothing saved."""
import copy
import json

import pytest

from portal.sweeps.models import Level, Plan, Run, Target
from tests.api_support import document, token_client

pytestmark = pytest.mark.usefixtures("fresh_throttles")


@pytest.fixture
def api(owner):
    return token_client(owner)


def _counts():
    return Run.objects.count(), Level.objects.count(), Target.objects.count(), Plan.objects.count()


def test_ingest_creates_run_and_levels_beside_existing_target_and_plan(api, target, plan):
    doc = document()
    response = api.post("/api/v1/ingest/", doc)
    assert response.status_code == 201, response.json()
    run = Run.objects.get(pk=response.json()["id"])
    assert (run.source, run.status, run.label) == ("ingest", "succeeded", "from-cli")
    assert (run.target, run.plan) == (target, plan)
    assert run.created.isoformat().startswith("2025-03-01T10:00")
    assert run.worker_host == "ci-runner" and run.client_version == "0.1.0"
    assert [lv.concurrency for lv in run.levels.order_by("index")] == [1, 4]
    assert run.levels.get(index=1).latency_p99_ms == doc["levels"][1]["latency_ms"]["p99"]
    assert run.server_config == {"--max-batch": "64"}
    assert Target.objects.count() == 1 and Plan.objects.count() == 1


def test_ingested_document_exports_back_unchanged(api, target, plan):
    doc = document()
    run_id = api.post("/api/v1/ingest/", doc).json()["id"]
    exported = api.get(f"/api/v1/runs/{run_id}/export/").json()
    assert exported["levels"] == doc["levels"]
    assert exported["summary"] == doc["summary"]
    assert exported["probe"] == doc["probe"]
    assert exported["run"]["label"] == "from-cli"


def test_ingest_creates_missing_target_and_plan_by_name(api, team):
    doc = document()
    doc["target"]["name"] = "new-server"
    doc["plan"]["name"] = "new-plan"
    assert api.post("/api/v1/ingest/", doc).status_code == 201
    target = Target.objects.get(name="new-server")
    plan = Plan.objects.get(name="new-plan")
    assert (target.team, target.model_name, target.engine) == (team, "sim-embed", "simulator")
    assert (plan.levels, plan.tokens, plan.dimensions) == ([1, 4], 32, 64)


def test_same_run_uuid_twice_is_409(api, target, plan):
    doc = document()
    doc["run"]["uuid"] = "8c6f8f4e-3c1f-4d39-9a57-0c86a2a6b9f1"
    first = api.post("/api/v1/ingest/", doc)
    assert first.status_code == 201
    again = api.post("/api/v1/ingest/", doc)
    assert again.status_code == 409
    assert again.json()["id"] == first.json()["id"]
    assert Run.objects.count() == 1


def _set(doc, path, value):
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [
        (("schema",), "embperf.run/2", "schema", "embperf.run/1"),
        (("levels", 1, "qps"), "fast", "levels[1].qps", "Expected number"),
        (("levels", 0, "requests_ok"), 1.5, "levels[0].requests_ok", "Expected integer"),
        (("levels", 0, "latency_ms", "p99"), "12", "levels[0].latency_ms.p99", "Expected number"),
        (("levels", 0, "colour"), "red", "levels[0].colour", "Unknown field"),
        (("target", "api_key"), "sk-leak", "target.api_key", "Unknown field"),
        (("wibble",), 1, "wibble", "Unknown field"),
        (("run", "status"), "running", "run.status", "not one of"),
        (("run", "started_at"), "yesterday", "run.started_at", "ISO 8601"),
        (("run", "uuid"), "not-a-uuid", "run.uuid", "UUID"),
        (("levels", 0, "qps"), _DELETE, "levels[0].qps", "required"),
        (("target",), _DELETE, "target", "required"),
        (("plan", "levels"), [], "plan.levels", "non-empty"),
        (("levels", 1, "index"), 0, "levels[1].index", "twice"),
        (("levels", 0, "concurrency"), None, "levels[0].concurrency", "closed-loop"),
        (("levels", 0, "error_rate"), 1.5, "levels[0].error_rate", "maximum"),
        (("levels", 0, "requests_ok"), 2**40, "levels[0].requests_ok", "maximum"),
        (("run", "label"), "bad\u0000label", "run.label", "NUL"),
        (("levels",), {"0": {}}, "levels", "Expected array"),
    ],
)
def test_bad_documents_are_400_naming_the_field_and_nothing_is_saved(api, target, plan, path, value, field, words):
    doc = copy.deepcopy(document())
    _set(doc, path, value)
    before = _counts()
    response = api.post("/api/v1/ingest/", doc)
    assert response.status_code == 400
    errors = response.json()
    assert field in errors, errors
    assert words.lower() in " ".join(errors[field]).lower(), errors
    assert _counts() == before


def test_document_that_is_not_an_object_is_400(api, team):
    response = api.post("/api/v1/ingest/", [1, 2, 3])
    assert response.status_code == 400
    assert "body" in response.json()
    assert Run.objects.count() == 0


def test_malformed_json_is_400(api, team):
    response = api.generic("POST", "/api/v1/ingest/", '{"schema": "embperf.run/1", "levels": [',
                           content_type="application/json")
    assert response.status_code == 400
    assert "Malformed JSON" in response.json()["body"][0]
    assert Run.objects.count() == 0


def test_huge_numbers_are_refused(api, team):
    body = json.dumps(document()).replace('"duration_s": 3.0', '"duration_s": 1e999', 1)
    response = api.generic("POST", "/api/v1/ingest/", body, content_type="application/json")
    assert response.status_code == 400
    assert "body" in response.json()
    assert Run.objects.count() == 0


def test_oversized_document_is_400_and_not_read(api, team, settings):
    settings.EMBPERF_API_MAX_INGEST_BYTES = 2_000
    doc = document()
    response = api.post("/api/v1/ingest/", doc)
    assert response.status_code == 400
    assert "limit of 2,000 bytes" in response.json()["body"][0]
    assert Run.objects.count() == 0


def test_wrong_content_type_is_415(api, team):
    response = api.generic("POST", "/api/v1/ingest/", "schema=1", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415


def test_outsider_cannot_ingest_into_another_team(outsider, team):
    response = token_client(outsider).post(f"/api/v1/ingest/?team={team.pk}", document())
    assert response.status_code == 400
    assert "team" in response.json()
    assert Run.objects.count() == 0


def test_viewer_cannot_ingest(team):
    from django.contrib.auth.models import User

    from portal.accounts.models import Membership

    viewer = User.objects.create_user("vera")
    Membership.objects.create(team=team, user=viewer, role="viewer")
    response = token_client(viewer).post("/api/v1/ingest/", document())
    assert response.status_code == 400
    assert "team" in response.json()
    assert Run.objects.count() == 0


def test_ingested_runs_are_invisible_to_other_teams(api, outsider, target, plan):
    run_id = api.post("/api/v1/ingest/", document()).json()["id"]
    assert token_client(outsider).get(f"/api/v1/runs/{run_id}/").status_code == 404
