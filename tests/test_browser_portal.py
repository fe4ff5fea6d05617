"""The portal in a real browser, against real processes: gunicorn serving the portal, a Celery
worker on its own queue and the simulator. Sign in, create a target pointing at the simulator and
test its connection, create plans, start a short run and watch the progress bar move, see the
results table and charts that drew, cancel a second run and see it cancelled; no console errors.

Screenshots go to var/screenshots/ (git-ignored) for a person to look at.
"""
import re
import subprocess
import time

import pytest

from benchmarks.simulator import running_simulator
from tests import e2e_support as e2e
from tests.prerequisites import INKED_PIXELS, launch_chromium, require_chromium

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

SCREENSHOTS = e2e.ROOT / "var" / "screenshots"
PASSWORD = "browser-test-password"

CREATE_USER = """
import django; django.setup()
from django.contrib.auth.models import User
from portal.accounts.models import Membership, Team
from portal.sweeps.models import QueueGrant
user = User.objects.create_user("walter", password={password!r})
team = Team.objects.create(name="Perf team")
Membership.objects.create(team=team, user=user, role="owner")
QueueGrant.objects.create(team=team, queue={queue!r})  # the operator lends the team this worker's queue
"""

@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    """Simulator, migrated SQLite database, file-system broker, Celery worker and web server."""
    require_chromium()
    var_dir = tmp_path_factory.mktemp("browser")
    queue = e2e.unique_name("browser_sweeps")
    env = e2e.base_env(var_dir, database_url=f"sqlite:///{var_dir / 'portal.sqlite3'}", broker_url="filesystem://")
    env["EMBPERF_STATIC_FROM_SOURCE"] = "true"  # static files straight from the source tree; DEBUG stays off
    worker = web = None
    with running_simulator() as sim:
        try:
            e2e.migrate(env)
            setup_script = CREATE_USER.format(password=PASSWORD, queue=queue)
            subprocess.run([e2e.PYTHON, "-c", setup_script], cwd=e2e.ROOT, env=env, check=True, timeout=120)
            worker = e2e.Worker(env, queue, var_dir / "worker.log")
            web = e2e.WebServer(env, var_dir / "web.log")
            url = web.wait_url()
            worker.wait_ready()
            yield {"url": url, "sim_url": sim.base_url, "queue": queue, "worker": worker, "web": web}
        finally:
            for part in (web, worker):
                if part is not None:
                    part.stop()


@pytest.fixture
def page(portal):
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(viewport={"width": 1360, "height": 900}, device_scale_factor=1)
        page = context.new_page()
        page.set_default_timeout(20_000)
        problems: list[str] = []
        page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
                if msg.type == "error" else None)
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.problems = problems
        yield page
        context.close()
        browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def painted(page, canvas_id: str) -> int:
    return page.evaluate(INKED_PIXELS, canvas_id)


def progress_width(page) -> float | None:
    """The progress bar's width in percent, or None while the page is between loads."""
    try:
        value = page.evaluate("() => { const b = document.getElementById('progress-bar');"
                              " return b ? b.style.width : null; }")
    except Exception:  # the page reloaded under us when the run finished
        return None
    return float(value.rstrip("%")) if value else None


def start_run(page, portal, *, plan: str, label: str) -> None:
    page.goto(portal["url"] + "/runs/new/")
    page.select_option("#id_target", label="simulator")
    page.select_option("#id_plan", label=plan)
    page.fill("#id_label", label)
    page.fill("#id_server_config", "--max-running-requests 128\n--chunked-prefill-size=4096")
    page.click("button:has-text('Start run')")
    page.wait_for_url(re.compile(r"/runs/\d+/$"))


def test_portal_in_a_browser(portal, page):
    base = portal["url"]

    # Sign in.
    page.goto(base + "/")
    page.wait_for_url(re.compile(r"/accounts/login/"))
    shot(page, "login")
    page.fill("#id_username", "walter")
    page.fill("#id_password", PASSWORD)
    page.click("button:has-text('Sign in')")
    page.wait_for_url(base + "/")
    assert page.locator("h1").inner_text() == "Dashboard"

    # A target pointing at the simulator; a bad URL first, which must be refused with a message.
    page.goto(base + "/targets/new/")
    page.fill("#id_name", "simulator")
    page.fill("#id_base_urls", portal["sim_url"].replace("http://", ""))
    page.fill("#id_model_name", "sim-embed")
    page.select_option("#id_engine", "simulator")
    page.fill("#id_launch_config", "--max-running-requests 128")
    page.fill("#id_queue", portal["queue"])
    page.click("button:has-text('Create target')")
    assert "no http:// or https:// scheme" in page.locator("#base_urls-errors").inner_text()
    shot(page, "target-form-error")
    page.fill("#id_base_urls", portal["sim_url"])
    page.click("button:has-text('Create target')")
    page.wait_for_url(re.compile(r"/targets/\d+/$"))

    # Test connection: the probe runs in the worker and the answer appears without a reload.
    page.click("#probe-button")
    page.locator("#probe-result").get_by_text("Connected.").wait_for(timeout=30_000)
    assert "sim-embed" in page.locator("#probe-result").inner_text()
    shot(page, "target-detail")

    # Two plans: a short one from the smoke preset, and a long one to cancel.
    for name, levels, duration in (("short", "1, 2, 4", "3"), ("long", "1, 2", "60")):
        page.goto(base + "/plans/new/?preset=smoke")
        page.fill("#id_name", name)
        if name == "short":  # a bad level list is refused next to the field
            page.fill("#id_levels", "1, 4, abc")
            page.click("button:has-text('Create plan')")
            assert "“abc” is not a number" in page.locator("#levels-errors").inner_text()
            shot(page, "plan-form-error")
        page.fill("#id_levels", levels)
        page.fill("#id_warmup_s", "0.5")
        page.fill("#id_duration_s", duration)
        page.fill("#id_tokens", "64")
        page.fill("#id_dimensions", "128")
        page.click("button:has-text('Create plan')")
        page.wait_for_url(re.compile(r"/plans/\d+/$"))

    # The short run: the progress bar moves, the live chart draws, then the results arrive.
    start_run(page, portal, plan="short", label="browser-short")
    widths: list[float] = []
    live_painted = levels_painted = 0
    took_live_shot = False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        width = progress_width(page)
        if width is not None and (not widths or width != widths[-1]):
            widths.append(width)
        if width is not None and width > 40 and not took_live_shot:
            try:
                page.wait_for_timeout(500)
                live_painted = painted(page, "live-chart")
                levels_painted = painted(page, "qps-chart")
                shot(page, "run-live")
                took_live_shot = True
            except Exception:  # the run finished and the page reloaded meanwhile
                pass
        try:
            if page.locator("#run-status").inner_text(timeout=1000) in ("Succeeded", "Failed"):
                break
        except Exception:
            pass
        time.sleep(0.25)
    page.wait_for_load_state()
    assert page.locator("#run-status").inner_text() == "Succeeded", portal["worker"].log()[-3000:]
    moving = [w for w in widths if w > 0]
    assert len(moving) >= 3 and moving == sorted(moving), f"progress bar widths seen: {widths}"
    assert live_painted > 500, "the live chart did not draw"
    assert levels_painted > 500, "the throughput chart did not draw while the run went on"

    rows = page.locator("#results-table tbody tr")
    assert rows.count() == 3
    first = rows.nth(0).inner_text()
    assert re.search(r"\d+ ms", first), first
    page.wait_for_timeout(800)  # let Chart.js finish its entry animation before reading pixels
    canvases = page.eval_on_selector_all("canvas", "all => all.map(c => c.id)")
    assert len(canvases) >= 2, canvases
    for canvas in canvases:
        assert painted(page, canvas) > 2000, f"the chart {canvas} is blank"
    assert "--max-running-requests 128" in page.content()
    shot(page, "run-detail")

    # The long run: cancel it while it runs; the page follows it to "Cancelled".
    start_run(page, portal, plan="long", label="browser-cancel")
    page.locator("#progress-phase").get_by_text("measuring").wait_for(timeout=60_000)
    shot(page, "run-running")
    page.click("#cancel-button")
    page.locator("#run-status", has_text="Cancelled").wait_for(timeout=20_000)
    shot(page, "run-cancelled")

    # The run list shows both, newest first.
    page.goto(base + "/runs/")
    labels = page.locator("#run-table tbody tr td:first-child").all_inner_texts()
    assert "browser-cancel" in labels[0] and "browser-short" in labels[1]
    shot(page, "run-list")

    assert page.problems == []
