"""A result document survives a trip through another portal: a run measured against the simulator is
exported, ingested by a team that has never seen it (its own targets, plans and runs), and exported
again; the two documents are the same apart from the portal's own id of the run.

Uses `transactional_db`: the worker's recorder writes levels from a thread of its own.
"""
import copy
import json

import pytest

from benchmarks.simulator import running_simulator
from benchmarks.sweep import run_sweep as engine_run_sweep
from portal.sweeps.models import Plan, Run, Target
from portal.sweeps.services import create_run
from tests.api_support import token_client
from workers.tasks import run_sweep

pytestmark = pytest.mark.usefixtures("fresh_throttles")

PLAN = {"levels": [1, 2], "warmup_s": 0.2, "duration_s": 1, "tokens": 32, "dimensions": 64, "timeout_s": 5,
        "slo_p99_ms": 500.0}


def _without_portal_ids(document: dict) -> dict:
    doc = copy.deepcopy(document)
    doc["run"].pop("id")
    return doc


def _export(api, run_id: int) -> dict:
    response = api.get(f"/api/v1/runs/{run_id}/export/")
    assert response.status_code == 200
    # Through JSON, as another portal or a person's file would carry it.
    return json.loads(response.content)


def _ingest(api, document: dict) -> int:
    response = api.post("/api/v1/ingest/", document, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def _assert_second_portal_gives_it_back(first: dict, outsider, other_team) -> None:
    assert not Run.objects.filter(team=other_team).exists()
    api = token_client(outsider)
    run_id = _ingest(api, first)
    second = _export(api, run_id)

    assert second["run"]["id"] == run_id != first["run"]["id"]
    assert _without_portal_ids(second) == _without_portal_ids(first)
    # The target and plan the second team got are the document's own (Target/Plan.from_spec).
    target = Target.objects.get(team=other_team)
    plan = Plan.objects.get(team=other_team)
    target_spec, plan_spec = target.to_spec(with_secret=False), plan.to_spec()
    # Except the worker queue and the tokenizer, which name things where the sweep ran.
    assert target_spec["queue"] == "sweeps" and "tokenizer" not in target_spec
    taken = [key for key in first["target"] if key not in ("queue", "tokenizer")]
    assert {key: target_spec[key] for key in taken} == {key: first["target"][key] for key in taken}
    shared = [key for key in first["plan"] if key in plan_spec]
    assert {"levels", "tokens", "dimensions", "slo_p99_ms", "abort_window_s"} <= set(shared)
    assert {key: plan_spec[key] for key in shared} == {key: first["plan"][key] for key in shared}


@pytest.fixture
def simulator():
    with running_simulator() as sim:
        yield sim


def test_a_run_the_worker_measured_exports_identically_from_a_second_portal(
        transactional_db, team, owner, other_team, outsider, simulator):
    target = Target.objects.create(team=team, name="sim", base_urls=[simulator.base_url], model_name="sim-embed",
                                   engine="simulator", launch_config={"--max-batch": "64"}, queue="gpu-host-1")
    plan = Plan.objects.create(team=team, name="short", **PLAN)
    run = create_run(target=target, plan=plan, label="night build", notes="first try",
                     server_config={"--max-running-requests": "128"})
    assert run_sweep.apply(args=[run.pk]).get() == Run.Status.SUCCEEDED

    first = _export(token_client(owner), run.pk)
    assert [level["concurrency"] for level in first["levels"]] == [1, 2]
    assert first["summary"]["peak_level"] in (1, 2) and first["probe"] and first["client"]["version"]
    assert (first["run"]["label"], first["run"]["status"]) == ("night build", "succeeded")
    assert first["target"]["queue"] == "gpu-host-1"
    _assert_second_portal_gives_it_back(first, outsider, other_team)


def test_a_document_the_cli_wrote_exports_identically_from_a_second_portal(
        transactional_db, team, owner, other_team, outsider, simulator):
    written = engine_run_sweep(
        {"name": "sim", "flavor": "openai", "base_urls": [simulator.base_url], "model": "sim-embed",
         "engine": "simulator"},
        {"name": "short", "mode": "closed", **PLAN})
    written = json.loads(json.dumps(written))  # as the CLI's --json file holds it

    api = token_client(owner)
    first = _export(api, _ingest(api, written))
    # The first portal gave back what the engine wrote, plus its own fields for the run.
    assert first["levels"] == written["levels"] and first["summary"] == written["summary"]
    assert {k: v for k, v in first.items() if k not in ("run", "target")} == \
        {k: v for k, v in written.items() if k not in ("run", "target")}
    _assert_second_portal_gives_it_back(first, outsider, other_team)
