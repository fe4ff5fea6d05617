"""The run page's extra charts, a compare of three runs and a history of ten runs in a real browser.

Runs are written straight into the database (documents.record_level with realistic level documents
from tests/factories.py) and pytest-django's live server serves the pages. Every chart must draw
(its canvas holds non-white pixels), "Copy as Markdown table" must copy a valid table, and the
browser console must stay free of errors. Screenshots go to var/screenshots/ for a person to look at.
"""
import datetime as dt
import os
import re
from pathlib import Path

import pytest

from tests.prerequisites import INKED_PIXELS, launch_chromium, require_chromium

pytestmark = pytest.mark.browser

# Playwright's sync API runs an event loop in this thread; the ORM calls below happen before it
# starts or from the live server's own thread, so Django's async-safety check does not apply.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

SCREENSHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"


@pytest.fixture
def runs(transactional_db, team, owner, target):
    from portal.sweeps.models import Plan
    from tests.factories import stored_run

    plan = Plan.objects.create(team=team, name="sweep 1-64", levels=[1, 4, 8, 16, 32, 64], warmup_s=2,
                               duration_s=20, tokens=512, dimensions=1024, slo_p99_ms=250)
    start = dt.datetime(2025, 6, 1, 9, 0, tzinfo=dt.UTC)
    made = []
    for i in range(10):
        slow = i == 8  # one regression after the baseline
        made.append(stored_run(
            target=target, plan=plan, seed=i, duration_s=12, gpu=i % 3 == 0,
            capacity_qps=260 if slow else 380 + 6 * i, base_ms=24 if slow else 20 - 0.3 * i,
            label="max-running 64" if i < 5 else "max-running 128",
            notes="cuda graphs off" if slow else f"nightly run {i}",
            server_config={"--max-running-requests": "64" if i < 5 else "128",
                           **({"--disable-cuda-graph": "true"} if slow else {})},
            created=start + dt.timedelta(days=i),
        ))
    made[2].is_baseline = True
    made[2].save(update_fields=["is_baseline"])
    return plan, made


@pytest.fixture
def page(live_server, client, owner):
    require_chromium()
    from playwright.sync_api import sync_playwright

    client.force_login(owner)
    session = client.cookies["sessionid"].value
    with sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        context.add_cookies([{"name": "sessionid", "value": session, "url": live_server.url}])
        try:
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
        except Exception:  # clipboard permissions are optional; #copied-text is checked anyway
            pass
        pg = context.new_page()
        pg.errors = []
        pg.on("console", lambda msg: pg.errors.append(msg.text) if msg.type == "error" else None)
        pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))
        yield pg
        browser.close()


def _charts_drawn(page, ids):
    page.wait_for_function("() => window.EmbperfResultCharts"
                           " && Object.keys(window.EmbperfResultCharts.charts).length > 0")
    for chart_id in ids:
        inked = page.evaluate(INKED_PIXELS, f"{chart_id}-canvas")
        assert inked > 500, f"chart {chart_id} looks blank ({inked} inked pixels)"


def _shot(page, name):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def _markdown_table_ok(text: str) -> list[str]:
    table = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert len(table) >= 3, text
    assert len({ln.count("|") - ln.count("\\|") for ln in table}) == 1, "rows with different column counts"
    assert re.fullmatch(r"\|( ?:?-{3,}:? ?\|)+", table[1].replace(" ", "")), table[1]
    return table


def test_run_compare_and_history_pages(page, live_server, runs):
    plan, made = runs
    target_id = made[0].target_id

    # A run with GPU telemetry: its four extra charts.
    page.goto(f"{live_server.url}/runs/{made[6].pk}/")
    _charts_drawn(page, ["run-throughput", "run-latency", "run-distribution", "run-timeline"])
    page.select_option("#run-timeline-variant", index=0)
    _charts_drawn(page, ["run-timeline"])
    _shot(page, "history_run.png")

    # Three runs compared against the baseline.
    ids = [made[2].pk, made[6].pk, made[8].pk]
    page.goto(f"{live_server.url}/compare/?runs={','.join(map(str, ids))}&baseline={made[2].pk}")
    _charts_drawn(page, [f"compare-{m}" for m in ("qps", "tokens_per_s", "mean_ms", "p50_ms", "p90_ms", "p99_ms",
                                                  "error_rate")])
    assert page.locator("#compare-table td.delta-worse").count() > 0  # the slow run
    assert page.locator("#what-changed").inner_text().count("--max-running-requests") == 1
    page.click("#copy-markdown")
    page.wait_for_function("() => document.getElementById('copied-text')")
    copied = page.evaluate("() => document.getElementById('copied-text').textContent")
    table = _markdown_table_ok(copied)
    assert len(table) == 2 + 6 * 7 and f"#{made[2].pk}" in table[0]
    try:
        clipboard = page.evaluate("() => navigator.clipboard.readText()")
    except Exception:  # headless clipboard may be unavailable; the mirrored text was checked
        clipboard = None
    if clipboard:
        assert clipboard == copied
    with page.expect_download() as download:
        page.click("button.chart-png[data-chart='compare-qps']")
    assert download.value.suggested_filename == "embperf-compare-qps.png"
    _shot(page, "history_compare.png")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("#compare-table").screenshot(path=str(SCREENSHOTS / "history_compare_table.png"))

    # Ten runs of one target under one plan.
    page.goto(f"{live_server.url}/history/?target={target_id}&plan={plan.pk}")
    _charts_drawn(page, ["history-qps", "history-p99", "history-peak", "history-knee"])
    assert page.locator("#history-table tbody tr").count() == 10
    assert "cuda graphs off" in page.locator("#history-table").inner_text()
    assert page.locator("#regressions li").count() >= 1
    _shot(page, "history_history.png")

    # The dashboard lists the regression and links the last two runs for comparison.
    page.goto(f"{live_server.url}/")
    assert f"#{made[8].pk}" in page.locator("#regressions").inner_text()
    assert page.locator("#quick-compare a").count() >= 1
    _shot(page, "history_dashboard.png")

    assert page.errors == [], page.errors
