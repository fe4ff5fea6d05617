"""The Content-Security-Policy in a real browser: every page carries it, every page still works under
it (charts draw, the history picker and forms post, the API docs render), nothing it loads breaks
it, and an inline script injected into a page does not run."""
import pytest

from portal.headers import API_DOCS_POLICY, HEADER
from tests.test_browser_history import _charts_drawn, page, runs  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

WATCH = """() => {
  window.__csp = [];
  document.addEventListener("securitypolicyviolation",
    (e) => window.__csp.push(e.violatedDirective + " " + (e.blockedURI || "inline")));
}"""


def visit(pg, url: str) -> dict:
    response = pg.goto(url)
    assert response.status == 200, (url, response.status)
    assert pg.errors == [], (url, pg.errors)
    return response.headers


def violations(pg) -> list:
    return pg.evaluate("() => window.__csp || []")


def test_every_page_works_under_the_policy(page, live_server, runs, settings):  # noqa: F811
    plan, made = runs
    page.add_init_script(f"({WATCH})()")
    policy = settings.EMBPERF_CSP
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy and "unsafe-eval" not in policy
    base = live_server.url
    pages = {}

    headers = visit(page, f"{base}/runs/{made[6].pk}/")
    pages["run"] = headers
    _charts_drawn(page, ["run-throughput", "run-latency", "run-distribution", "run-timeline"])
    assert violations(page) == []

    ids = ",".join(str(m.pk) for m in (made[2], made[6], made[8]))
    pages["compare"] = visit(page, f"{base}/compare/?runs={ids}&baseline={made[2].pk}")
    _charts_drawn(page, ["compare-qps", "compare-p99_ms"])

    pages["history"] = visit(page, f"{base}/history/?target={made[0].target_id}&plan={plan.pk}")
    _charts_drawn(page, ["history-qps", "history-p99"])
    # The picker's script (a file now, no inline handler) fills the hidden fields on change.
    options = page.locator("#pair-select option")
    if options.count() > 1:
        value = options.nth(1).get_attribute("value")
        page.select_option("#pair-select", value)
        assert page.input_value("#history-picker input[name=target]") == value.split(":")[0]

    for name, path in [("dashboard", "/"), ("targets", "/targets/"), ("target", f"/targets/{made[0].target_id}/"),
                       ("runs", "/runs/"), ("plans", "/plans/")]:
        pages[name] = visit(page, base + path)
        assert violations(page) == [], (name, violations(page))

    # A form posts and lands on the saved plan.
    pages["plan form"] = visit(page, f"{base}/plans/new/")
    page.fill("#id_name", "posted under the policy")
    page.fill("#id_levels", "1, 2")
    page.click("form.form button[type=submit]")
    page.wait_for_load_state()
    assert "posted under the policy" in page.content()
    assert violations(page) == []

    # The API docs: Swagger UI starts from its script file and lists the operations.
    pages["api docs"] = visit(page, f"{base}/api/docs/")
    page.wait_for_selector(".swagger-ui .opblock", timeout=20_000)
    assert page.errors == [], page.errors
    docs = pages.pop("api docs")[HEADER.lower()]
    assert docs == API_DOCS_POLICY and "script-src 'self';" in docs
    pages["admin"] = visit(page, f"{base}/admin/login/")

    for name, headers in pages.items():
        assert headers.get(HEADER.lower()) == policy, name
    assert page.errors == [], page.errors

    # An inline script slipped into a page does not run, and the browser reports it.
    visit(page, f"{base}/runs/")
    page.evaluate("""() => { const s = document.createElement("script");
                             s.textContent = "window.__ran = true"; document.body.appendChild(s); }""")
    page.wait_for_function("() => window.__csp.length > 0")
    assert page.evaluate("() => window.__ran === undefined")
    assert violations(page)[0].startswith("script-src")
