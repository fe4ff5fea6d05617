"""The run page's words agree with its status badge (no "Run queued" banner or queue text once the
run runs, in the server's page and as the live page follows it), and the telemetry table leaves out
the columns no level has data for, so it fits its box."""
import os

import pytest
from django.urls import reverse

from benchmarks.telemetry.readings import ServerReading
from benchmarks.telemetry.summary import summarise_server
from portal.sweeps.models import Run
from tests.factories import level_doc, stored_run
from tests.prerequisites import launch_chromium, require_chromium

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop runs in this thread

DURATION = 10.0


def server_only_level(index: int, concurrency: int) -> dict:
    """A level of a server whose /metrics the client read (vLLM gauges and token counter), no GPU."""
    doc = level_doc(index, concurrency, duration_s=DURATION, seed=index)
    readings = [ServerReading(t=t, source="http://cpu-host:8000/metrics", engines=["vllm"],
                              queue_depth=max(concurrency - 4, 0), running=min(concurrency, 4),
                              prompt_tokens=1e6 + doc["tokens_per_s"] * t) for t in range(-1, int(DURATION) + 2)]
    tokens = round(doc["tokens_per_s"] * DURATION)
    server, notes = summarise_server(readings, 0.0, DURATION, client_prompt_tokens=tokens)
    doc.update(server=server, telemetry_notes=notes)
    return doc


@pytest.fixture
def cpu_server_run(target, plan):
    target.metrics_urls = ["http://cpu-host:8000/metrics"]
    target.save()
    return stored_run(target=target, plan=plan, docs=[server_only_level(i, c) for i, c in enumerate((1, 8))])


def _telemetry_headings(html: str) -> list[str]:
    table = html[html.index('id="telemetry-table"'):]
    table = table[: table.index("</thead>")]
    return [part.split(">")[-1] for part in table.split("</th>")[:-1]]


def test_telemetry_without_a_gpu_shows_only_the_server_columns(client, owner, cpu_server_run):
    client.force_login(owner)
    html = client.get(cpu_server_run.get_absolute_url()).content.decode()
    assert _telemetry_headings(html) == ["Concurrency", "Server queue", "Running", "Server tokens"]
    table = html[html.index('id="telemetry-table"'):]
    row = table[table.index('data-level="1"'):]
    row = row[: row.index("</tr>")]
    assert "4 / 4" in row and "× 1.00" in row and row.count("<td") == 4


def test_telemetry_with_notes_only_says_there_are_no_figures(client, owner, target, plan):
    target.gpu_source = "prometheus"
    target.save()
    run = stored_run(target=target, plan=plan, duration_s=3)
    run.document["telemetry_notes"] = ["no GPU metrics at http://gpu-host:9400/metrics"]
    run.save(update_fields=["document"])
    client.force_login(owner)
    html = client.get(run.get_absolute_url()).content.decode()
    assert 'id="telemetry-table"' not in html and "No level has GPU or server figures." in html


def test_a_running_run_keeps_no_queued_words(client, owner, target, plan, enqueued):
    client.force_login(owner)
    response = client.post(reverse("run-create"), {"target": target.pk, "plan": plan.pk, "label": "", "notes": "",
                                                   "server_config": ""})
    run = Run.objects.get()
    # A worker took it before the browser followed the redirect.
    Run.objects.filter(pk=run.pk).update(status=Run.Status.RUNNING, worker_host="bench-01",
                                         progress={"phase": "warmup", "level_index": 0, "levels_total": 2})
    html = client.get(response["Location"]).content.decode()
    assert 'id="run-status">Running<' in html
    assert "Run queued" not in html and "Waiting for a worker" not in html
    assert '<span class="muted small" id="progress-phase">warming up</span>' in html


def test_a_queued_run_says_so(client, owner, target, plan, enqueued):
    client.force_login(owner)
    response = client.post(reverse("run-create"), {"target": target.pk, "plan": plan.pk, "label": "", "notes": "",
                                                   "server_config": ""})
    html = client.get(response["Location"]).content.decode()
    assert 'id="run-status">Queued<' in html and "Run queued. This page follows it live." in html
    assert 'data-tags="while-queued"' in html and "Waiting for a worker on queue" in html


@pytest.mark.browser
def test_the_live_page_follows_queued_to_running(live_server, client, owner, transactional_db, target, plan,
                                                 monkeypatch):
    require_chromium()
    from playwright.sync_api import sync_playwright

    from portal.taskqueue import app

    monkeypatch.setattr(app, "send_task", lambda *args, **kwargs: None)  # no worker: the test plays it
    target.metrics_urls = ["http://cpu-host:8000/metrics"]
    target.save()
    finished = stored_run(target=target, plan=plan, docs=[server_only_level(i, c) for i, c in enumerate((1, 8))])
    client.force_login(owner)
    session = client.cookies["sessionid"].value
    with sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        context.add_cookies([{"name": "sessionid", "value": session, "url": live_server.url}])
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(live_server.url + reverse("run-create"))
        page.select_option("#id_target", str(target.pk))
        page.select_option("#id_plan", str(plan.pk))
        page.get_by_role("button", name="Start run").click()
        page.wait_for_selector("#progress-card")
        assert page.locator(".message").inner_text().startswith("Run queued")
        assert "Waiting for a worker" in page.locator("#progress-phase").inner_text()
        run = Run.objects.exclude(pk=finished.pk).get()
        Run.objects.filter(pk=run.pk).update(status=Run.Status.RUNNING, worker_host="bench-01",
                                             progress={"phase": "measure", "level_index": 0, "levels_total": 2,
                                                       "load": 1})
        page.wait_for_function("() => document.getElementById('run-status').textContent === 'Running'",
                               timeout=30_000)
        page.wait_for_function("() => document.getElementById('progress-phase').textContent === 'measuring'",
                               timeout=30_000)
        assert page.locator(".message").count() == 0
        assert "Waiting for a worker" not in page.locator("main").inner_text()
        shots = os.path.join(os.path.dirname(__file__), "..", "var", "screenshots")
        os.makedirs(shots, exist_ok=True)
        page.screenshot(path=os.path.join(shots, "run-live-running.png"))

        # The finished run's telemetry table fits its box: no column without data, no sideways scroll.
        page.goto(live_server.url + finished.get_absolute_url())
        wrap = page.locator("#telemetry .table-wrap")
        sizes = wrap.evaluate("el => [el.scrollWidth, el.clientWidth]")
        assert sizes[0] <= sizes[1], sizes
        page.locator("#telemetry").screenshot(path=os.path.join(shots, "run-telemetry-no-gpu.png"))
        browser.close()
    assert errors == []
