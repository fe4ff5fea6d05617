"""Compare, history, baseline and dashboard pages: content, permissions, query counts."""
import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from portal.history.comparison import build_comparison
from tests.factories import stored_run


def _runs(target, plan, n, start=None, **kwargs):
    start = start or dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    return [stored_run(target=target, plan=plan, label=f"r{i}", seed=i, duration_s=8,
                       created=start + dt.timedelta(days=i), **kwargs) for i in range(n)]


@pytest.fixture
def three(target, plan):
    base = stored_run(target=target, plan=plan, label="before", seed=1, duration_s=10,
                      created=dt.datetime(2025, 3, 1, tzinfo=dt.UTC), server_config={"--max-running-requests": "64"})
    same = stored_run(target=target, plan=plan, label="again", seed=2, duration_s=10,
                      created=dt.datetime(2025, 3, 2, tzinfo=dt.UTC), server_config={"--max-running-requests": "64"})
    tuned = stored_run(target=target, plan=plan, label="tuned", seed=3, duration_s=10, capacity_qps=600,
                       base_ms=14, created=dt.datetime(2025, 3, 3, tzinfo=dt.UTC),
                       server_config={"--max-running-requests": "128"})
    return base, same, tuned


def test_comparison_marks_the_tuned_run_better_and_the_repeat_within_noise(three):
    base, same, tuned = three
    data = build_comparison([base, same, tuned], base).to_dict()
    qps_rows = [r for r in data["rows"] if r["metric"] == "qps"]
    assert [r["load"] for r in qps_rows] == [1.0, 4.0]
    for row in qps_rows:
        assert row["cells"][0]["delta"] is None  # the baseline itself
        assert row["cells"][1]["delta"]["verdict"] == "same"
        assert row["cells"][2]["delta"]["verdict"] == "better"
        assert row["cells"][2]["delta"]["pct"] > 10
    changed = {c["field"]: c["values"] for c in data["config_diff"]["changed"]}
    assert changed == {"Server --max-running-requests": ["64", "64", "128"]}
    assert any(f["field"] == "Engine" for f in data["config_diff"]["same"])


def test_markdown_and_csv_are_tables(three):
    base, _, tuned = three
    comparison = build_comparison([base, tuned], base)
    lines = comparison.to_markdown().splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    widths = {ln.count("|") for ln in table}
    assert len(widths) == 1 and len(table) == 2 + 2 * 7  # header, rule, 2 levels x 7 metrics
    assert table[0].startswith("| Concurrency | Metric | #") and "(baseline)" in table[0]
    assert "%\\*" in comparison.to_markdown()  # the tuned run's gain is beyond the noise
    csv_lines = comparison.to_csv().splitlines()
    assert csv_lines[0].startswith("concurrency,metric,unit,run ")
    assert len(csv_lines) == 1 + 14 + 4  # a line per level and metric, then the run-wide figures


def test_compare_page(client, owner, three):
    base, same, tuned = three
    client.force_login(owner)
    url = reverse("compare") + f"?runs={base.pk},{same.pk},{tuned.pk}&baseline={base.pk}"
    response = client.get(url)
    assert response.status_code == 200
    body = response.content.decode()
    for text in ("compare-qps-canvas", "compare-p99_ms-canvas", "What changed", "--max-running-requests",
                 "Copy as Markdown table", "delta-better", 'id="compare-markdown"'):
        assert text in body


def test_compare_form_redirects_to_permalink(client, owner, three):
    base, same, _ = three
    client.force_login(owner)
    response = client.get(reverse("compare"), {"runs": [base.pk, same.pk], "baseline": same.pk})
    assert response.status_code == 302
    assert response["Location"] == f"/compare/?runs={base.pk},{same.pk}&baseline={same.pk}"


def test_compare_needs_two_runs_and_numbers(client, owner, three):
    client.force_login(owner)
    body = client.get(reverse("compare") + f"?runs={three[0].pk}").content.decode()
    assert "Pick between 2 and 10 runs" in body
    body = client.get(reverse("compare") + "?runs=1,x").content.decode()
    assert "&#x27;x&#x27; is not a run number" in body
    # '²' is a digit to str.isdigit() but no number to int().
    response = client.get(reverse("compare") + "?runs=1,%C2%B2")
    assert response.status_code == 200 and "is not a run number" in response.content.decode()
    response = client.get(reverse("history") + "?target=%C2%B2&plan=1")
    assert response.status_code in (200, 404)


def test_compare_csv_download(client, owner, three):
    client.force_login(owner)
    response = client.get(reverse("compare") + f"?runs={three[0].pk},{three[2].pk}&format=csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")


def test_outsider_gets_404_on_compare(client, outsider, three):
    client.force_login(outsider)
    response = client.get(reverse("compare") + f"?runs={three[0].pk},{three[1].pk}")
    assert response.status_code == 404


def test_outsider_sees_nothing_on_dashboard_and_history(client, outsider, three, target, plan):
    client.force_login(outsider)
    body = client.get(reverse("dashboard")).content.decode()
    assert "before" not in body and "tuned" not in body
    assert client.get(reverse("history") + f"?target={target.pk}&plan={plan.pk}").status_code == 404
    assert "sim · smoke" not in client.get(reverse("history")).content.decode()


def test_anonymous_is_sent_to_login(client):
    response = client.get(reverse("compare"))
    assert response.status_code == 302 and "login" in response["Location"]


def test_history_flags_runs_worse_than_baseline(client, owner, target, plan):
    runs = _runs(target, plan, 5)
    slow = stored_run(target=target, plan=plan, label="slow", seed=9, duration_s=8, capacity_qps=250, base_ms=30,
                      created=dt.datetime(2025, 4, 1, tzinfo=dt.UTC))
    client.force_login(owner)
    response = client.post(reverse("history-baseline", args=[runs[0].pk]))
    assert response.status_code == 302
    response = client.get(reverse("history") + f"?target={target.pk}&plan={plan.pk}")
    assert response.status_code == 200
    hist = response.context["history"]
    assert hist.baseline.id == runs[0].pk
    flagged = {p.id for p in hist.regressions}
    assert flagged == {slow.pk}
    assert any("Requests/s" in r for r in next(p for p in hist.points if p.id == slow.pk).regressions)
    body = response.content.decode()
    assert "history-qps-canvas" in body and "history-knee-canvas" in body and "Worse than the baseline" in body
    # The dashboard lists it too.
    dash = client.get(reverse("dashboard")).content.decode()
    assert "slow" in dash and 'id="regressions"' in dash


def test_only_one_baseline_per_target_and_plan(client, owner, target, plan):
    a, b = _runs(target, plan, 2)
    client.force_login(owner)
    client.post(reverse("history-baseline", args=[a.pk]))
    client.post(reverse("history-baseline", args=[b.pk]))
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.is_baseline, b.is_baseline) == (False, True)
    client.post(reverse("history-baseline", args=[b.pk]), {"clear": "1"})
    b.refresh_from_db()
    assert not b.is_baseline


def test_outsider_cannot_mark_baseline(client, outsider, target, plan):
    (a,) = _runs(target, plan, 1)
    client.force_login(outsider)
    assert client.post(reverse("history-baseline", args=[a.pk])).status_code == 404
    a.refresh_from_db()
    assert not a.is_baseline


def test_baseline_needs_post(client, owner, target, plan):
    (a,) = _runs(target, plan, 1)
    client.force_login(owner)
    assert client.get(reverse("history-baseline", args=[a.pk])).status_code == 405


def test_dashboard_quick_compare_links_last_two_runs(client, owner, target, plan):
    runs = _runs(target, plan, 3)
    client.force_login(owner)
    body = client.get(reverse("dashboard")).content.decode()
    assert f"?runs={runs[1].pk},{runs[2].pk}&amp;baseline={runs[1].pk}" in body


def _count_queries(client, url):
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    return len(ctx.captured_queries)


def test_query_counts_do_not_grow_with_runs(client, owner, target, plan):
    client.force_login(owner)
    runs = _runs(target, plan, 3)
    runs[0].is_baseline = True
    runs[0].save()
    history_url = reverse("history") + f"?target={target.pk}&plan={plan.pk}"
    few_history = _count_queries(client, history_url)
    few_compare = _count_queries(client, reverse("compare") + "?runs=" + ",".join(str(r.pk) for r in runs))
    few_dash = _count_queries(client, reverse("dashboard"))
    more = _runs(target, plan, 9, start=dt.datetime(2025, 5, 1, tzinfo=dt.UTC))
    assert _count_queries(client, history_url) == few_history
    assert _count_queries(client, reverse("compare") + "?runs=" + ",".join(str(r.pk) for r in more)) == few_compare
    assert _count_queries(client, reverse("dashboard")) == few_dash
