"""A sweep the abort policy stopped says so everywhere a result leaves the portal: the run in the API,
the result document, the CSV and Markdown exports, and a document ingested from the CLI."""
import csv
import io

import pytest

from portal.sweeps.models import Run
from tests.api_support import document, token_client
from tests.factories import level_docs, stored_run

pytestmark = pytest.mark.usefixtures("fresh_throttles")


@pytest.fixture
def api(owner):
    return token_client(owner)


@pytest.fixture
def aborted(target, plan):
    docs = level_docs((1, 4))
    docs[1].update(status="aborted", unreachable_s=10.2,
                   abort_reason="error rate above 50% for 10 s in a row; the target refused connections for 10.2 s "
                                "of the level")
    run = stored_run(target=target, plan=plan, docs=docs)
    run.document = {**run.document, "run": {"status": "succeeded", "aborted_at_level": 4,
                                            "status_reason": "stopped after level 1 (load 4)"}}
    run.status_reason = "level 4 stopped early"
    run.save()
    return run


def test_the_api_names_the_level_the_abort_policy_stopped_at(api, aborted, target, plan):
    body = api.get(f"/api/v1/runs/{aborted.pk}/").json()
    assert body["status"] == "succeeded" and body["aborted_at_level"] == 4
    complete = stored_run(target=target, plan=plan, docs=level_docs((1, 4)))
    assert api.get(f"/api/v1/runs/{complete.pk}/").json()["aborted_at_level"] is None
    listed = {r["id"]: r["aborted_at_level"] for r in api.get("/api/v1/runs/").json()["results"]}
    assert listed == {aborted.pk: 4, complete.pk: None}


def test_each_level_in_the_api_carries_its_status(api, aborted):
    levels = api.get(f"/api/v1/runs/{aborted.pk}/").json()["levels"]
    assert [(level["concurrency"], level["status"]) for level in levels] == [(1, "completed"), (4, "aborted")]


def test_the_document_csv_and_markdown_say_the_sweep_was_stopped(api, aborted):
    doc = api.get(f"/api/v1/runs/{aborted.pk}/export/").json()
    assert doc["run"]["aborted_at_level"] == 4 and doc["run"]["resumed_from"] is None
    assert doc["levels"][1]["unreachable_s"] == 10.2
    rows = list(csv.DictReader(io.StringIO(api.get(f"/api/v1/runs/{aborted.pk}/export/?format=csv").content.decode())))
    assert [row["run_aborted_at_level"] for row in rows] == ["4", "4"]
    assert [row["level_status"] for row in rows] == ["completed", "aborted"]
    assert rows[1]["unreachable_s"] == "10.2"
    markdown = api.get(f"/api/v1/runs/{aborted.pk}/export/?format=md").content.decode()
    assert "Stopped by the abort policy at level 4" in markdown
    assert "| 4 (aborted) |" in markdown


def test_an_ingested_cli_document_keeps_aborted_at_level(api, target, plan):
    doc = document()
    doc["run"]["aborted_at_level"] = 4
    doc["levels"][1].update(status="aborted", unreachable_s=3.5)
    response = api.post("/api/v1/ingest/", doc)
    assert response.status_code == 201, response.json()
    run = Run.objects.get(pk=response.json()["id"])
    assert run.aborted_at_level == 4
    assert api.get(f"/api/v1/runs/{run.pk}/").json()["aborted_at_level"] == 4


def test_a_bad_aborted_at_level_is_refused_naming_the_field(api, target, plan):
    doc = document()
    doc["run"]["aborted_at_level"] = "four"
    response = api.post("/api/v1/ingest/", doc)
    assert response.status_code == 400 and "run.aborted_at_level" in response.json()
