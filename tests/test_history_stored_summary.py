"""History, comparison and the dashboard show the peak, knee and SLO level the engine stored for a run,
even when its last level was stopped early (aborted by the error policy, or cancelled by a person)."""
import csv
import io

import pytest
from django.urls import reverse

from benchmarks.document import KEY_FIGURES, summarize
from portal.front.templatetags.embperf_format import num
from portal.sweeps.models import Level, Plan
from tests.api_support import token_client
from tests.factories import level_docs, stored_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def sweep_plan(team):
    # Every level meets this SLO, so only the rule for stopped levels decides the SLO level.
    return Plan.objects.create(team=team, name="sweep", levels=[1, 4, 8], warmup_s=1, duration_s=10, tokens=64,
                               slo_p99_ms=10_000)


def runs_with_a_stopped_last_level(target, plan, status):
    """Two runs of the same target and plan; the second one's last (and fastest) level has `status`."""
    base = stored_run(target=target, plan=plan, label="base", docs=level_docs((1, 4, 8), duration_s=10, seed=1))
    docs = level_docs((1, 4, 8), duration_s=10, seed=2)
    docs[-1].update(status=status, abort_reason="error rate 60 % over 10 s" if status == "aborted" else None)
    stopped = stored_run(target=target, plan=plan, label="stopped", docs=docs)
    return base, stopped


def as_text(value) -> str:
    return "" if value is None else f"{value:g}"


@pytest.mark.parametrize("status", ["aborted", "cancelled"])
def test_every_page_gives_the_stored_summarys_figures(client, owner, target, sweep_plan, status):
    base, stopped = runs_with_a_stopped_last_level(target, sweep_plan, status)
    stored = {key: stopped.summary[key] for key in KEY_FIGURES}
    # The engine's rules: a stopped level never counts for the SLO; a cancelled one not for the peak either.
    assert stored["slo_max_level"] == 4
    assert stored["peak_level"] == (8 if status == "aborted" else 4)
    assert Level.objects.get(run=stopped, index=2).status == status
    client.force_login(owner)

    run_page = client.get(reverse("run-detail", args=[stopped.pk])).content.decode()
    summary_html = run_page.split('id="run-summary"')[1].split("</div>\n</div>")[0]
    for key in ("peak_qps", "peak_level", "slo_max_level"):
        assert f'<div class="stat-value">{num(stored[key])}</div>' in summary_html, key

    history = client.get(reverse("history") + f"?target={target.pk}&plan={sweep_plan.pk}").context["history"]
    assert {p.id: p.figures for p in history.points}[stopped.pk] == stored

    compare_url = reverse("compare") + f"?runs={base.pk},{stopped.pk}"
    page = client.get(compare_url).context["comparison"]
    assert {r["id"]: r["figures"] for r in page["runs"]}[stopped.pk] == stored

    rows = list(csv.reader(io.StringIO(client.get(compare_url + "&format=csv").content.decode())))
    header = rows[0]
    column = header.index(f"run {stopped.pk} value")
    figures = {row[1]: row[column] for row in rows[1:] if row[0] == "run"}
    assert figures == {key: as_text(stored[key]) for key in KEY_FIGURES}

    api = token_client(owner).get(f"/api/v1/compare/?runs={base.pk},{stopped.pk}").json()
    assert {r["id"]: r["figures"] for r in api["runs"]}[stopped.pk] == stored

    dashboard = client.get(reverse("dashboard")).context["recent"]
    row = {r["id"]: r for r in dashboard}[stopped.pk]
    assert {key: row[key] for key in ("peak_qps", "knee_level", "slo_max_level")} == {
        key: stored[key] for key in ("peak_qps", "knee_level", "slo_max_level")}


def test_a_stopped_level_would_change_the_figures_if_it_were_counted(target, sweep_plan):
    """Guards the test above: counted as completed, the stopped level gives other figures."""
    _, stopped = runs_with_a_stopped_last_level(target, sweep_plan, "aborted")
    docs = [dict(lv.data, status="completed") for lv in stopped.levels.all()]
    assert summarize(docs, sweep_plan.slo_p99_ms)["slo_max_level"] == 8 != stopped.summary["slo_max_level"]


def test_a_run_without_a_summary_shows_no_figures(client, owner, target, sweep_plan):
    run = stored_run(target=target, plan=sweep_plan, docs=level_docs((1, 4), duration_s=5), status="failed")
    type(run).objects.filter(pk=run.pk).update(summary={})
    client.force_login(owner)
    history = client.get(reverse("history") + f"?target={target.pk}&plan={sweep_plan.pk}").context["history"]
    assert history.points[0].figures == dict.fromkeys(KEY_FIGURES)
