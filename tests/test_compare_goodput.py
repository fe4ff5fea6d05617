"""Goodput in compare: a figure beside req/s for plans with a latency SLO, with its noise, and left out
of the default figures where no compared level has one."""
import datetime as dt

import pytest
from django.urls import reverse

from benchmarks.compare import level_noise
from portal.sweeps.models import Plan
from tests.factories import level_docs, stored_run

pytestmark = pytest.mark.django_db

LEVELS = (1, 4, 8)


def with_goodput(docs, share):
    for doc in docs:
        doc["goodput"] = {"per_s": round(doc["qps"] * share, 3), "share": share, "limit_ms": 200.0}
    return docs


@pytest.fixture
def slo_plan(team):
    return Plan.objects.create(team=team, name="slo", levels=list(LEVELS), warmup_s=1, duration_s=10, tokens=512,
                               timeout_s=30, slo_p99_ms=200)


def test_goodput_noise_combines_throughput_and_the_share():
    doc = with_goodput(level_docs(LEVELS, duration_s=10)[1:2], 0.8)[0]
    noise = level_noise(doc)
    assert noise["goodput"] > 0.8 * noise["qps"], "the share's own binomial error adds to the throughput's"
    del doc["goodput"]
    assert level_noise(doc)["goodput"] is None


def test_compare_shows_a_goodput_that_fell_while_requests_per_second_held(client, owner, target, slo_plan):
    day = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
    before = stored_run(target=target, plan=slo_plan, label="before", created=day,
                        docs=with_goodput(level_docs(LEVELS, seed=1, duration_s=10), 0.99))
    after = stored_run(target=target, plan=slo_plan, label="after", created=day + dt.timedelta(hours=1),
                       docs=with_goodput(level_docs(LEVELS, seed=2, duration_s=10), 0.60))
    client.force_login(owner)
    page = client.get(reverse("compare") + f"?runs={before.pk},{after.pk}&baseline={before.pk}")
    comparison = page.context["comparison"]
    assert "goodput" in [m["key"] for m in comparison["metrics"]]
    rows = {(r["load"], r["metric"]): r for r in comparison["rows"]}
    assert rows[(8, "goodput")]["cells"][1]["delta"]["verdict"] == "worse"
    assert rows[(8, "qps")]["cells"][1]["delta"]["verdict"] != "worse"
    assert any(chart["id"] == "compare-goodput" for chart in page.context["charts"])


def test_goodput_is_left_out_by_default_without_an_slo(client, owner, target, team):
    plan = Plan.objects.create(team=team, name="no slo", levels=list(LEVELS), warmup_s=1, duration_s=10,
                               tokens=512, timeout_s=30)
    a = stored_run(target=target, plan=plan, seed=1, duration_s=10)
    b = stored_run(target=target, plan=plan, seed=2, duration_s=10)
    client.force_login(owner)
    comparison = client.get(reverse("compare") + f"?runs={a.pk},{b.pk}").context["comparison"]
    assert "goodput" not in [m["key"] for m in comparison["metrics"]]
    assert "goodput" in comparison["available"]["metrics"]
