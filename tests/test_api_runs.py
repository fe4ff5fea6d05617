"""Runs through the API: list and filters, detail with levels, start, cancel, exports, raw samples, compare."""
import csv
import datetime as dt
import io
import json

import pytest

from portal.sweeps import samples
from portal.sweeps.models import Run
from tests.api_support import token_client
from tests.factories import level_docs, stored_run

pytestmark = pytest.mark.usefixtures("fresh_throttles")


@pytest.fixture
def api(owner):
    return token_client(owner)


@pytest.fixture
def finished(target, plan):
    return stored_run(target=target, plan=plan, docs=level_docs((1, 4), duration_s=3, gpu=True), label="base")


def test_list_runs_with_filters_and_pagination(api, target, plan, finished):
    other = stored_run(target=target, plan=plan, docs=level_docs((1, 4), duration_s=3, seed=1), label="mrr-128",
                       status="failed", created=dt.datetime(2024, 6, 1, tzinfo=dt.UTC))
    ids = lambda r: [x["id"] for x in r.json()["results"]]  # noqa: E731
    assert ids(api.get("/api/v1/runs/")) == [finished.pk, other.pk]
    assert ids(api.get("/api/v1/runs/?status=failed")) == [other.pk]
    assert ids(api.get("/api/v1/runs/?label=MRR")) == [other.pk]
    assert ids(api.get(f"/api/v1/runs/?target={target.pk}&plan={plan.pk}")) == [finished.pk, other.pk]
    assert ids(api.get("/api/v1/runs/?created_before=2025-01-01")) == [other.pk]
    assert ids(api.get("/api/v1/runs/?created_after=2025-01-01T00:00:00Z")) == [finished.pk]
    Run.objects.filter(pk=other.pk).update(is_baseline=True)
    assert ids(api.get(f"/api/v1/runs/?target={target.pk}&plan={plan.pk}&is_baseline=true")) == [other.pk]
    assert ids(api.get("/api/v1/runs/?is_baseline=false")) == [finished.pk]
    page = api.get("/api/v1/runs/?page_size=1").json()
    assert page["count"] == 2 and len(page["results"]) == 1 and page["next"]


@pytest.mark.parametrize(
    ("query", "field"),
    [("status=exploded", "status"), ("target=abc", "target"), ("created_after=yesterday", "created_after")],
)
def test_bad_run_filters_are_400_naming_the_parameter(api, finished, query, field):
    response = api.get(f"/api/v1/runs/?{query}")
    assert response.status_code == 400
    assert field in response.json()


def test_run_detail_has_levels_and_links(api, finished):
    body = api.get(f"/api/v1/runs/{finished.pk}/").json()
    assert [lv["concurrency"] for lv in body["levels"]] == [1, 4]
    assert body["levels"][1]["latency_p99_ms"] == finished.levels.get(index=1).latency_p99_ms
    assert body["links"]["csv"] == f"/api/v1/runs/{finished.pk}/export/?format=csv"
    assert body["web_url"] == f"/runs/{finished.pk}/"


def test_outsider_gets_404_for_every_run_endpoint(outsider, finished):
    api = token_client(outsider)
    assert api.get("/api/v1/runs/").json()["results"] == []
    for path in ("", "export/", "export/?format=csv", "export/?format=md", "samples/"):
        assert api.get(f"/api/v1/runs/{finished.pk}/{path}").status_code == 404, path
    assert api.post(f"/api/v1/runs/{finished.pk}/cancel/").status_code == 404
    response = api.get(f"/api/v1/compare/?runs={finished.pk},{finished.pk + 1000}")
    assert response.status_code == 404


def test_start_run_enqueues_and_returns_its_url(api, target, plan, enqueued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/v1/runs/", {"target": target.pk, "plan": plan.pk, "label": "ci-42",
                                              "server_config": {"--max-running-requests": 128}})
    assert response.status_code == 201, response.json()
    body = response.json()
    run = Run.objects.get(pk=body["id"])
    assert body["url"] == f"/api/v1/runs/{run.pk}/" and response["Location"] == body["url"]
    assert (run.status, run.source, run.label) == ("queued", "api", "ci-42")
    assert run.server_config == {"--max-running-requests": "128"}
    assert enqueued and enqueued[0]["args"] == [run.pk] and enqueued[0]["queue"] == target.queue


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"target": None}, "target"),
        ({"target": 999999}, "target"),
        ({"target": "one"}, "target"),
        ({"colour": 1}, "colour"),
        ({"server_config": {"bad key!": "1"}}, "server_config"),
        ({"server_config": ["x"]}, "server_config"),
        ({"label": "x" * 101}, "label"),
    ],
)
def test_bad_start_payloads_are_400_and_nothing_is_created(api, target, plan, change, field):
    payload = {"target": target.pk, "plan": plan.pk, **change}
    payload = {k: v for k, v in payload.items() if v is not None}
    response = api.post("/api/v1/runs/", payload)
    assert response.status_code == 400
    assert field in response.json(), response.json()
    assert not Run.objects.exists()


def test_start_with_another_teams_target_is_400(outsider, target, plan):
    response = token_client(outsider).post("/api/v1/runs/", {"target": target.pk, "plan": plan.pk})
    assert response.status_code == 400
    assert "target" in response.json()
    assert not Run.objects.exists()


def test_viewer_cannot_start_or_cancel(team, target, plan, finished):
    from django.contrib.auth.models import User

    from portal.accounts.models import Membership

    viewer = User.objects.create_user("vera")
    Membership.objects.create(team=team, user=viewer, role="viewer")
    api = token_client(viewer)
    assert api.post("/api/v1/runs/", {"target": target.pk, "plan": plan.pk}).status_code == 403
    assert api.post(f"/api/v1/runs/{finished.pk}/cancel/").status_code == 403


def test_cancel_queued_run(api, target, plan):
    from portal.sweeps.services import create_run

    run = create_run(target=target, plan=plan)
    response = api.post(f"/api/v1/runs/{run.pk}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"


def test_cancel_running_run_sets_the_flag(api, target, plan):
    from django.utils import timezone

    from portal.sweeps.services import create_run

    run = create_run(target=target, plan=plan)
    # A live run: its worker wrote a heartbeat just now (a silent one is ended at once, test_run_recovery.py).
    Run.objects.filter(pk=run.pk).update(status="running", started=timezone.now(), heartbeat=timezone.now())
    body = api.post(f"/api/v1/runs/{run.pk}/cancel/").json()
    assert (body["status"], body["cancel_requested"]) == ("running", True)


def test_cancel_finished_run_changes_nothing(api, finished):
    body = api.post(f"/api/v1/runs/{finished.pk}/cancel/").json()
    assert (body["status"], body["cancel_requested"]) == ("succeeded", False)


def test_export_document_is_embperf_run_1(api, finished):
    doc = api.get(f"/api/v1/runs/{finished.pk}/export/").json()
    assert doc["schema"] == "embperf.run/1"
    assert doc["run"]["id"] == finished.pk and doc["run"]["label"] == "base"
    assert doc["run"]["status"] == "succeeded"
    assert [lv["concurrency"] for lv in doc["levels"]] == [1, 4]
    assert doc["levels"][0] == finished.levels.get(index=0).data
    assert doc["client"]["host"] == "bench-01"
    assert doc["target"]["name"] == "sim" and "api_key" not in doc["target"]


def test_export_document_validates_against_the_ingest_schema(api, finished):
    from portal.api.ingest import validate_document

    doc = api.get(f"/api/v1/runs/{finished.pk}/export/").json()
    validate_document(doc)


def test_export_csv_has_stable_columns_and_exact_figures(api, finished):
    from portal.api.export import LEVEL_COLUMN_NAMES

    response = api.get(f"/api/v1/runs/{finished.pk}/export/?format=csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert tuple(rows[0].keys()) == LEVEL_COLUMN_NAMES
    assert LEVEL_COLUMN_NAMES[:4] == ("run_id", "run_uuid", "run_label", "run_status")
    for row, level in zip(rows, finished.levels.order_by("index"), strict=True):
        assert float(row["qps"]) == level.data["qps"]
        assert float(row["latency_p99_ms"]) == level.data["latency_ms"]["p99"]
        assert float(row["gpu_power_mean_w"]) == level.data["gpu"]["gpus"][0]["power_mean_w"]
        assert row["client_bound"] == "false"


def test_export_markdown_table(api, finished):
    response = api.get(f"/api/v1/runs/{finished.pk}/export/?format=md")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/markdown")
    text = response.content.decode()
    assert "| Concurrency | req/s |" in text
    # header, alignment rule, one row per level
    assert len([line for line in text.splitlines() if line.startswith("| ")]) == 4
    assert "| ---: | ---: |" in text


def test_samples_stream_as_csv(api, finished):
    batch = [(0.01 * i, 0.01 * i + 0.001, 0.01 * i + 0.021, "ok", 200, 32, 1, 900) for i in range(50)]
    sink = samples.writer_for_run(finished)
    sink(0, batch)
    sink(1, [(0.0, 0.0, None, "timeout", None, 0, 1, 0)])
    response = api.get(f"/api/v1/runs/{finished.pk}/samples/")
    assert response.status_code == 200
    assert response.streaming
    text = b"".join(response.streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 51
    assert list(rows[0]) == list(samples.SAMPLE_COLUMNS)
    assert rows[0]["load"] == "1" and rows[0]["outcome"] == "ok"
    assert float(rows[1]["latency_ms"]) == pytest.approx(21.0)
    assert float(rows[1]["service_ms"]) == pytest.approx(20.0)
    assert rows[-1]["level_index"] == "1" and rows[-1]["load"] == "4"
    assert rows[-1]["outcome"] == "timeout" and rows[-1]["latency_ms"] == ""
    assert samples.sample_count(finished) == 51


def test_samples_writer_works_inside_an_event_loop(transactional_db, finished):
    import asyncio

    async def engine_calls_sink():
        samples.writer_for_run(finished)(0, [(0.0, 0.0, 0.01, "ok", 200, 8, 1, 100)])

    # A thread of its own: the test database must be reachable from the writer's thread.
    asyncio.run(engine_calls_sink())
    assert samples.sample_count(finished) == 1


def test_samples_404_when_none_kept(api, finished):
    response = api.get(f"/api/v1/runs/{finished.pk}/samples/")
    assert response.status_code == 404
    assert "keep_samples" in response.json()["detail"]


def test_compare_json_csv_and_markdown(api, target, plan, finished):
    other = stored_run(target=target, plan=plan, docs=level_docs((1, 4), duration_s=3, seed=3, base_ms=40),
                       label="slower")
    url = f"/api/v1/compare/?runs={finished.pk},{other.pk}&baseline={finished.pk}"
    body = api.get(url).json()
    assert body["baseline"] == finished.pk
    assert [r["id"] for r in body["runs"]] == [finished.pk, other.pk]
    p99 = [row for row in body["rows"] if row["metric"] == "p99_ms" and row["load"] == 4][0]
    delta = p99["cells"][1]["delta"]
    assert delta["diff"] > 0 and "significant" in delta
    csv_response = api.get(url + "&format=csv")
    assert csv_response["Content-Type"].startswith("text/csv")
    assert csv_response.content.decode().splitlines()[0].startswith("concurrency,metric,unit")
    md = api.get(url + "&format=md")
    assert md["Content-Type"].startswith("text/markdown")
    assert "(baseline)" in md.content.decode()


@pytest.mark.parametrize(
    ("query", "field"),
    [("", "runs"), ("runs=1", "runs"), ("runs=a,b", "runs"), ("runs=1,%C2%B2", "runs"),
     ("runs=1,2&baseline=x", "baseline")],
)
def test_compare_bad_queries_are_400(api, finished, query, field):
    response = api.get(f"/api/v1/compare/?{query}")
    assert response.status_code == 400
    assert field in response.json()


def test_compare_same_run_twice_is_400(api, finished):
    response = api.get(f"/api/v1/compare/?runs={finished.pk},{finished.pk}")
    assert response.status_code == 400
    assert "at least two" in response.json()["runs"][0]


def test_api_docs_and_schema_are_served_without_a_cdn(client, db):
    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    paths = json.loads(schema.content)["paths"]
    for path in ("/api/v1/runs/", "/api/v1/runs/{id}/export/", "/api/v1/compare/", "/api/v1/ingest/"):
        assert path in paths
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "swagger-ui" in html and "cdn." not in html and "unpkg" not in html and "jsdelivr" not in html
