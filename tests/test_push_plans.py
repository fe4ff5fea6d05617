"""Ingest and `run --push` never file a sweep under a plan whose settings differ from the document's:
the run goes to a plan named after what differs, and the answer (and the CLI) says which."""
import json
import subprocess
import sys

import pytest

from benchmarks.simulator import running_simulator
from portal.accounts.models import ApiToken
from portal.sweeps.models import Plan, Run
from tests.api_support import document, token_client
from tests.factories import level_docs, stored_run

pytestmark = pytest.mark.usefixtures("fresh_throttles")


def _other_levels() -> dict:
    doc = document(levels=level_docs((16, 32, 64), duration_s=3))
    doc["plan"] = {**doc["plan"], "levels": [16, 32, 64], "duration_s": 3}
    return doc


def test_a_document_of_other_levels_gets_a_plan_of_its_own(owner, target, plan):
    api = token_client(owner)
    response = api.post("/api/v1/ingest/", _other_levels())
    assert response.status_code == 201, response.json()
    body = response.json()
    run = Run.objects.get(pk=body["id"])
    assert run.plan != plan
    assert run.plan.name == body["plan_name"] == "smoke (levels 16-64, 3 s)"
    assert (run.plan.levels, run.plan.duration_s) == ([16, 32, 64], 3)
    assert body["plan_note"].startswith("Filed under a new plan “smoke (levels 16-64, 3 s)”: the plan “smoke” has "
                                        "other settings (levels, duration_s")
    assert not plan.runs.exists()

    # The next sweep like it joins that plan's history.
    again = _other_levels()
    again["levels"] = level_docs((16, 32, 64), duration_s=3, seed=2)
    second = api.post("/api/v1/ingest/", again).json()
    assert second["plan"] == run.plan_id
    assert second["plan_note"].startswith("Filed under the plan “smoke (levels 16-64, 3 s)”")
    assert Plan.objects.count() == 2


def test_a_document_of_the_plans_own_settings_joins_it(owner, target, plan):
    body = token_client(owner).post("/api/v1/ingest/", document()).json()
    assert body["plan"] == plan.pk and body["plan_note"] == "Filed under the plan “smoke”."


def test_a_taken_variant_name_with_other_settings_is_not_reused(owner, team, target, plan):
    Plan.objects.create(team=team, name="smoke (levels 16-64, 3 s)", levels=[16, 64], duration_s=3, tokens=32,
                        dimensions=64, timeout_s=5, warmup_s=0.5)
    body = token_client(owner).post("/api/v1/ingest/", _other_levels()).json()
    assert body["plan_name"] == "smoke (levels 16-64, 3 s) 2"
    assert Plan.objects.get(pk=body["plan"]).levels == [16, 32, 64]


def test_cli_push_of_other_levels_never_lands_in_the_existing_plan(live_server, owner, target, plan, tmp_path):
    browser_run = stored_run(target=target, plan=plan, label="browser")
    _, token = ApiToken.issue(owner, "ci")
    out_file = tmp_path / "result.json"
    with running_simulator() as sim:
        cli = subprocess.run(
            [sys.executable, "-m", "benchmarks", "run", "--url", sim.base_url, "--model", "sim-embed",
             "--levels", "2,3,4", "--duration", "1", "--warmup", "0.2", "--tokens", "32", "--dimensions", "64",
             "--timeout", "5", "--quiet", "--json", str(out_file), "--label", "from-ci",
             "--push", live_server.url, "--token", token, "--target-name", target.name, "--plan-name", plan.name],
            capture_output=True, text=True, timeout=120,
        )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    pushed = Run.objects.exclude(pk=browser_run.pk).get()
    assert pushed.plan != plan and list(plan.runs.all()) == [browser_run]
    assert pushed.plan.levels == json.loads(out_file.read_text())["plan"]["levels"]
    assert f"Filed under a new plan “{pushed.plan.name}”: the plan “smoke” has other settings" in cli.stdout
    assert pushed.plan.name.startswith("smoke (levels 2-4, 1 s")


def test_the_default_thresholds_written_out_are_the_plans_own(owner, target, plan):
    """The engine writes the default thresholds out; a portal plan stores none named: the same settings,
    so the run joins the plan and the segment of the plan's browser runs."""
    from benchmarks.plan import DEFAULT_THRESHOLDS
    from portal.history.segments import config_fingerprint

    browser_run = stored_run(target=target, plan=plan, label="browser")
    doc = document()
    # As the engine writes it: every setting of the plan, the thresholds spelled out.
    doc["plan"] = {**plan.to_spec(), "thresholds": [dict(t) for t in DEFAULT_THRESHOLDS]}
    body = token_client(owner).post("/api/v1/ingest/", doc).json()
    assert body["plan"] == plan.pk, body
    pushed = Run.objects.get(pk=body["id"])
    fingerprint = config_fingerprint({}, pushed.plan_config, {})
    assert fingerprint == config_fingerprint({}, {**browser_run.plan_config, "thresholds": None}, {})
