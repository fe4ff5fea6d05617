"""The run page: results table, labels on untrusted figures, progress JSON, cancel, team scoping."""
from datetime import UTC, datetime

import pytest
from django.urls import reverse

from portal.front.templatetags.embperf_format import ms, num
from portal.sweeps.models import Run

pytestmark = pytest.mark.django_db


@pytest.fixture
def finished(target, plan):
    from tests.factories import level_docs, stored_run

    docs = level_docs((1, 4), duration_s=5, error_rate=0.02, gpu=True)
    docs[1]["client"] = {"client_bound": True, "client_bound_reason": "event-loop lag p99 85 ms"}
    docs[1]["errors"]["timeout"] = 3
    return stored_run(target=target, plan=plan, docs=docs, label="mrr-128",
                      server_config={"--max-running-requests": "128"})


def test_results_table(client, owner, finished):
    client.force_login(owner)
    response = client.get(finished.get_absolute_url())
    html = response.content.decode()
    assert response.status_code == 200
    for heading in ("Concurrency", "QPS", "Tokens/s", "Avg latency", "p50", "p90", "P99", "Error rate",
                    "Errors by class", "VRAM peak", "GPU util", "Power", "J / 1k tok"):
        assert f">{heading}</th>" in html, heading
    level = finished.levels.get(index=0)
    assert f"<strong>{ms(level.latency_p99_ms)}</strong>" in html and num(level.qps) in html
    assert "<code>http_5xx</code>" in html and "<code>timeout</code> 3" in html
    assert "20.0 GiB" in html
    assert f"{num(level.gpu_util_mean)} %" in html and f"{num(level.power_mean_w)} W" in html
    assert num(level.joules_per_1k_tokens) in html
    assert "--max-running-requests 128" in html
    assert f'href="/api/v1/runs/{finished.pk}/export/?format=csv"' in html
    assert client.get(f"/api/v1/runs/{finished.pk}/export/?format=csv").status_code == 200
    # A finished run's charts come from the history app's partial; the live ones are gone.
    assert 'id="run-charts"' in html and 'id="qps-chart"' not in html
    assert 'id="progress-card"' not in html and 'id="cancel-button"' not in html


def test_client_bound_level_is_labelled(client, owner, finished):
    client.force_login(owner)
    html = client.get(finished.get_absolute_url()).content.decode()
    assert html.count("⚠ client-bound") == 1
    assert "event-loop lag p99 85 ms" in html
    assert "Some figures cannot be trusted" in html
    row = html[html.index('data-level="1"'):]
    row = row[: row.index("</tr>")]
    assert "untrusted" in row


def test_no_vram_column_without_gpu_data(client, owner, target, plan):
    from tests.factories import stored_run

    run = stored_run(target=target, plan=plan, duration_s=3)
    client.force_login(owner)
    html = client.get(run.get_absolute_url()).content.decode()
    assert "VRAM" not in html and "client-bound" not in html


def test_running_run_has_progress_and_cancel(client, owner, target, plan):
    from portal.sweeps.services import create_run

    run = create_run(target=target, plan=plan)
    client.force_login(owner)
    html = client.get(run.get_absolute_url()).content.decode()
    assert 'id="progress-card"' in html and 'id="live-chart"' in html and 'id="cancel-button"' in html
    assert 'id="qps-chart"' in html and 'id="latency-chart"' in html and "chart.umd.min.js" in html
    assert "Results appear here as each level finishes" in html
    assert reverse("run-progress", args=[run.pk]) in html


def test_progress_json(client, owner, target, plan):
    from portal.sweeps.documents import record_level
    from portal.sweeps.services import create_run
    from tests.factories import level_doc

    run = create_run(target=target, plan=plan)
    recent = [{"t": t, "completed": 100 + t, "errors": 0, "p50_ms": 5, "p99_ms": 9, "in_flight": 4,
               "level_index": 1, "load": 4, "run_t": 10 + t} for t in range(3)]
    run.status = Run.Status.RUNNING
    run.worker_host = "gpu-01"
    run.started = datetime(2025, 3, 1, 12, 0, 5, tzinfo=UTC)
    run.progress = {"level_index": 1, "levels_total": 2, "load": 4, "phase": "measure", "level_elapsed_s": 3,
                    "level_total_s": 6, "run_elapsed_s": 13, "run_eta_s": 4, "recent": recent}
    run.save()
    record_level(run, level_doc(0, 1, duration_s=3))
    client.force_login(owner)
    state = client.get(reverse("run-progress", args=[run.pk])).json()
    assert state["status"] == "running" and state["is_final"] is False
    assert state["started_display"] == "2025-03-01 12:00:05" and state["worker_host"] == "gpu-01"
    assert state["progress"]["level_index"] == 1 and len(state["progress"]["recent"]) == 3
    assert state["levels_total"] == 2 and len(state["levels"]) == 1
    assert state["levels"][0]["load"] == 1 and state["levels"][0]["qps"] > 0
    assert 'id="results-table"' in state["results_html"]
    # A page that already shows this many levels gets only the live part.
    same = client.get(reverse("run-progress", args=[run.pk]) + "?levels=1").json()
    assert same["levels"] is None and same["results_html"] is None and same["levels_done"] == 1
    assert same["progress"]["phase"] == "measure"


def test_cancel_queued_run_ends_it(client, owner, target, plan):
    from portal.sweeps.services import create_run

    run = create_run(target=target, plan=plan)
    client.force_login(owner)
    response = client.post(reverse("run-cancel", args=[run.pk]), follow=True)
    run.refresh_from_db()
    assert run.status == "cancelled" and run.cancel_requested
    assert "Cancelled before it started" in response.content.decode()


def test_cancel_running_run_sets_the_flag(client, owner, target, plan):
    from django.utils import timezone

    from portal.sweeps.services import create_run

    run = create_run(target=target, plan=plan)
    # A live run: its worker wrote a heartbeat just now (a silent one is ended at once, test_run_recovery.py).
    Run.objects.filter(pk=run.pk).update(status="running", started=timezone.now(), heartbeat=timezone.now())
    client.force_login(owner)
    html = client.post(reverse("run-cancel", args=[run.pk]), follow=True).content.decode()
    run.refresh_from_db()
    assert run.status == "running" and run.cancel_requested
    assert "Cancelling…" in html


def test_cancel_needs_post(client, owner, target, plan):
    from portal.sweeps.services import create_run

    run = create_run(target=target, plan=plan)
    client.force_login(owner)
    assert client.get(reverse("run-cancel", args=[run.pk])).status_code == 405
    run.refresh_from_db()
    assert not run.cancel_requested


@pytest.mark.parametrize("name, method", [("run-detail", "get"), ("run-progress", "get"), ("run-cancel", "post")])
def test_outsider_gets_404(client, outsider, finished, name, method):
    client.force_login(outsider)
    assert getattr(client, method)(reverse(name, args=[finished.pk])).status_code == 404


def test_failed_run_shows_reason(client, owner, target, plan):
    from portal.sweeps.services import create_run

    run = create_run(target=target, plan=plan)
    Run.objects.filter(pk=run.pk).update(status="failed", status_reason="connection refused at http://127.0.0.1:9100")
    client.force_login(owner)
    html = client.get(run.get_absolute_url()).content.decode()
    assert "connection refused at http://127.0.0.1:9100" in html and "This run finished no level" in html


def test_finished_run_page_builds_its_charts(client, owner, target, plan):
    from tests.factories import stored_run

    run = stored_run(target=target, plan=plan, seed=4, duration_s=6, gpu=True)
    client.force_login(owner)
    response = client.get(reverse("run-detail", args=[run.pk]))
    charts = {chart["id"]: chart for chart in response.context["charts"]}
    assert list(charts) == ["run-throughput", "run-latency", "run-distribution", "run-timeline"]
    html = response.content.decode()
    for chart_id in charts:
        assert f"{chart_id}-canvas" in html
    assert "GPU utilization" in html and "js/result_charts.js" in html
    # The timeline opens on the last level.
    last = str(run.levels.order_by("index").last().index)
    assert charts["run-timeline"]["variant"] == last
    assert charts["run-timeline"]["datasets"] == charts["run-timeline"]["variants"][last]["datasets"]
