"""Round trip: the CLI sweeps the simulator and pushes to a live portal; the run joins the history of
the same target and plan beside a run made in the browser, and its CSV export carries the CLI's figures."""
import csv
import io
import json
import subprocess
import sys

import pytest

from benchmarks.push import PushError, push_document
from benchmarks.simulator import running_simulator
from portal.accounts.models import ApiToken
from portal.sweeps.models import Run
from tests.factories import level_docs, stored_run

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("fresh_throttles")]


def test_cli_push_lands_in_history_beside_a_browser_run(live_server, owner, target, plan, tmp_path, client):
    browser_run = stored_run(target=target, plan=plan, docs=level_docs((1, 2), duration_s=3), label="browser")
    _, token = ApiToken.issue(owner, "ci")
    out_file = tmp_path / "result.json"
    with running_simulator() as sim:
        cli = subprocess.run(
            [sys.executable, "-m", "benchmarks", "run", "--url", sim.base_url, "--model", "sim-embed",
             # The plan's own settings: a sweep of other settings gets a plan of its own (test_push_plans.py).
             "--levels", "1,4", "--duration", "2", "--warmup", "0.5", "--tokens", "32", "--dimensions", "64",
             "--timeout", "5",
             "--quiet", "--json", str(out_file), "--label", "from-ci",
             "--push", live_server.url, "--token", token, "--target-name", target.name, "--plan-name", plan.name],
            capture_output=True, text=True, timeout=120,
        )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "pushed to the portal as run" in cli.stdout
    document = json.loads(out_file.read_text())

    pushed = Run.objects.exclude(pk=browser_run.pk).get()
    assert (pushed.source, pushed.label, pushed.target, pushed.plan) == ("ingest", "from-ci", target, plan)
    assert f"/runs/{pushed.pk}/" in cli.stdout

    # The history of this target and plan shows both runs.
    client.force_login(owner)
    page = client.get(f"/history/?target={target.pk}&plan={plan.pk}")
    assert page.status_code == 200
    assert {p.id for p in page.context["history"].points} == {browser_run.pk, pushed.pk}

    # The CSV export carries the CLI's figures exactly.
    api = client
    export = api.get(f"/api/v1/runs/{pushed.pk}/export/?format=csv")
    rows = list(csv.DictReader(io.StringIO(export.content.decode())))
    assert len(rows) == len(document["levels"]) == 2
    for row, level in zip(rows, document["levels"], strict=True):
        assert float(row["concurrency"]) == level["concurrency"]
        assert int(row["requests_ok"]) == level["requests_ok"]
        for column, value in (("qps", level["qps"]), ("tokens_per_s", level["tokens_per_s"]),
                              ("latency_p50_ms", level["latency_ms"]["p50"]),
                              ("latency_p99_ms", level["latency_ms"]["p99"]), ("error_rate", level["error_rate"])):
            assert float(row[column]) == value, column
    assert json.loads(api.get(f"/api/v1/runs/{pushed.pk}/export/").content)["levels"] == document["levels"]

    # Pushing the same document again finds the run instead of adding a copy.
    again = push_document(live_server.url, token, document)
    assert again["existing"] is True and again["id"] == pushed.pk
    assert Run.objects.count() == 2


def test_push_errors_are_plain_words(live_server, owner):
    with pytest.raises(PushError, match="refused the token"):
        push_document(live_server.url, "embp_wrong", {"schema": "embperf.run/1"})
    _, token = ApiToken.issue(owner, "ci")
    with pytest.raises(PushError, match="run: This field is required"):
        push_document(live_server.url, token, {"schema": "embperf.run/1"})
    with pytest.raises(PushError, match="http"):
        push_document("127.0.0.1:8000", token, {})
