"""Compare that answers the question in one look: picked figures and levels (the seed's table: req/s at
16/32/64 before and after, mean and p99), mean latency among the figures, the noise threshold beside a
greyed change, *Compare…* from a run page with its baseline, "What changed" in the Markdown, a
baseline endpoint, `baseline=` that never adds a run, and one meaning per field name."""
import datetime as dt

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from portal.accounts.models import Membership
from portal.sweeps.models import Plan, Run
from tests.api_support import token_client
from tests.factories import stored_run

pytestmark = pytest.mark.usefixtures("fresh_throttles")

LEVELS = (1, 4, 8, 16, 32, 64)


@pytest.fixture
def sweep(team):
    return Plan.objects.create(team=team, name="1-64", levels=list(LEVELS), warmup_s=1, duration_s=10, tokens=512,
                               dimensions=1024, timeout_s=30)


@pytest.fixture
def before_after(target, sweep):
    day = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
    before = stored_run(target=target, plan=sweep, label="before", seed=1, duration_s=10, created=day,
                        server_config={"--max-running-requests": "64"})
    after = stored_run(target=target, plan=sweep, label="after", seed=2, duration_s=10, capacity_qps=480,
                       created=day + dt.timedelta(hours=1), server_config={"--max-running-requests": "128"})
    return before, after


def _seed_url(before, after, fmt=""):
    return (reverse("compare") + f"?runs={before.pk},{after.pk}&baseline={before.pk}"
            f"&metrics=qps,mean_ms,p99_ms&levels=16,32,64" + (f"&format={fmt}" if fmt else ""))


def test_picked_figures_and_levels_make_the_seed_table(client, owner, before_after):
    before, after = before_after
    client.force_login(owner)
    response = client.get(_seed_url(before, after))
    assert response.status_code == 200
    table = response.context["table"]
    assert [g["load"] for g in table] == [16, 32, 64]
    assert [[r["metric"]["key"] for r in g["rows"]] for g in table] == [["qps", "mean_ms", "p99_ms"]] * 3
    body = response.content.decode()
    assert 'name="metrics" value="mean_ms" checked' in body and 'name="levels" value="32" checked' in body
    # Markdown and CSV follow the pick: 3 levels x 3 figures.
    md = client.get(_seed_url(before, after, "md")).content.decode()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")][2:]
    assert len(rows) == 9 and rows[1].startswith("| 16 | Mean latency (ms) |")
    csv_lines = client.get(_seed_url(before, after, "csv")).content.decode().splitlines()
    assert [ln.split(",")[:2] for ln in csv_lines[1:10]] == [
        [load, m] for load in ("16", "32", "64") for m in ("qps", "mean_ms", "p99_ms")]


def test_a_form_pick_goes_to_the_permalink(client, owner, before_after):
    before, after = before_after
    client.force_login(owner)
    response = client.get(reverse("compare"), {"runs": f"{before.pk},{after.pk}", "baseline": before.pk,
                                               "metrics": ["qps", "p99_ms"], "levels": ["16", "64"]})
    assert response.status_code == 302
    assert response["Location"].endswith(f"?runs={before.pk},{after.pk}&baseline={before.pk}"
                                         "&metrics=qps,p99_ms&levels=16,64")


def test_wrong_picks_are_named(client, owner, before_after):
    before, after = before_after
    client.force_login(owner)
    base = reverse("compare") + f"?runs={before.pk},{after.pk}"
    assert "&#x27;speed&#x27; is not a compared figure" in client.get(base + "&metrics=speed").content.decode()
    assert "Level 128 is in none of the compared runs" in client.get(base + "&levels=128").content.decode()
    api = token_client(owner)
    assert "metrics" in api.get(f"/api/v1/compare/?runs={before.pk},{after.pk}&metrics=speed").json()
    assert "levels" in api.get(f"/api/v1/compare/?runs={before.pk},{after.pk}&levels=128").json()


def test_mean_latency_is_compared_with_its_noise(before_after):
    from portal.history.comparison import build_comparison

    before, after = before_after
    data = build_comparison([before, after], before, metrics=["mean_ms"]).to_dict()
    assert [m["key"] for m in data["metrics"]] == ["mean_ms"]
    cell = data["rows"][-1]["cells"][1]
    assert cell["value"] == after.levels.get(index=5).latency_mean_ms
    assert cell["noise"] is not None and cell["delta"]["verdict"] in ("better", "worse", "same")


def test_a_greyed_change_shows_its_noise_threshold(client, owner, target, sweep):
    a = stored_run(target=target, plan=sweep, label="a", seed=1, duration_s=10)
    b = stored_run(target=target, plan=sweep, label="b", seed=2, duration_s=10)
    client.force_login(owner)
    response = client.get(reverse("compare") + f"?runs={a.pk},{b.pk}&metrics=p99_ms")
    same = [(row, c) for g in response.context["table"] for row in g["rows"] for c in row["cells"]
            if c["delta"] and c["delta"]["verdict"] == "same"]
    assert same, "two runs of one set-up should differ within the noise somewhere"
    body = response.content.decode()
    assert "within noise: ±" in body and " ms (no repeats yet)</span>" in body
    # Without repeats the wider floor applies: 10 % of the baseline's p99 at the least.
    assert all(c["delta"]["floor"] == 0.10 and c["delta"]["threshold"] >= 0.10 * row["cells"][0]["value"]
               for row, c in same)


def test_markdown_carries_what_changed(client, owner, before_after):
    before, after = before_after
    client.force_login(owner)
    md = client.get(reverse("compare") + f"?runs={before.pk},{after.pk}&format=md").content.decode()
    assert "**What changed**" in md
    assert f"- Server --max-running-requests: #{before.pk} 64, #{after.pk} 128" in md
    page = client.get(reverse("compare") + f"?runs={before.pk},{after.pk}")
    assert "**What changed**" in page.context["markdown"]


def test_compare_from_a_run_page_preselects_its_baseline(client, owner, before_after):
    before, after = before_after
    client.force_login(owner)
    # No baseline yet: the run before it.
    page = client.get(after.get_absolute_url()).content.decode()
    assert f'href="/compare/?runs={before.pk},{after.pk}&amp;baseline={before.pk}"' in page
    Run.objects.filter(pk=before.pk).update(is_baseline=True)
    page = client.get(after.get_absolute_url()).content.decode()
    assert f'href="/compare/?runs={before.pk},{after.pk}&amp;baseline={before.pk}"' in page
    # The baseline's own page compares it with the newest run after it.
    page = client.get(before.get_absolute_url()).content.decode()
    assert f'href="/compare/?runs={before.pk},{after.pk}&amp;baseline={before.pk}"' in page
    followed = client.get(f"/compare/?runs={before.pk},{after.pk}&baseline={before.pk}")
    assert followed.status_code == 200 and "Pick between" not in followed.content.decode()


def test_a_lone_run_opens_the_picker_with_it_ticked(client, owner, target, sweep):
    alone = stored_run(target=target, plan=sweep, label="alone", seed=1, duration_s=10)
    client.force_login(owner)
    page = client.get(alone.get_absolute_url()).content.decode()
    assert f'href="/compare/?pick={alone.pk}"' in page
    body = client.get(f"/compare/?pick={alone.pk}").content.decode()
    assert "Pick between" not in body and f"Run #{alone.pk} is ticked below" in body
    assert f'name="runs" value="{alone.pk}" checked' in body


def test_baseline_parameter_never_adds_a_run(client, owner, before_after, target, sweep):
    before, after = before_after
    third = stored_run(target=target, plan=sweep, label="third", seed=3, duration_s=10)
    client.force_login(owner)
    response = client.get(reverse("compare") + f"?runs={before.pk},{after.pk}&baseline={third.pk}")
    assert [r["id"] for r in response.context["comparison"]["runs"]] == [before.pk, after.pk]
    assert f"Run #{third.pk} is not one of the compared runs" in response.content.decode()
    api = token_client(owner)
    answer = api.get(f"/api/v1/compare/?runs={before.pk},{after.pk}&baseline={third.pk}")
    assert answer.status_code == 400
    assert answer.json()["baseline"] == [f"Run {third.pk} is not one of the compared runs; add it to runs or "
                                         "leave baseline out."]


def test_one_meaning_per_field_name(owner, before_after):
    before, after = before_after
    Run.objects.filter(pk=after.pk).update(is_baseline=True)  # the history's baseline ...
    api = token_client(owner)
    body = api.get(f"/api/v1/compare/?runs={before.pk},{after.pk}&baseline={before.pk}").json()
    runs = {r["id"]: r for r in body["runs"]}
    # ... is not the run this comparison is against.
    assert (runs[before.pk]["is_reference"], runs[before.pk]["is_baseline"]) == (True, False)
    assert (runs[after.pk]["is_reference"], runs[after.pk]["is_baseline"]) == (False, True)
    assert api.get(f"/api/v1/runs/{after.pk}/").json()["is_baseline"] is True


def test_baseline_endpoint_sets_and_clears(owner, team, outsider, before_after):
    before, after = before_after
    api = token_client(owner)
    assert api.patch(f"/api/v1/runs/{before.pk}/", {"is_baseline": True}, format="json").status_code == 405
    response = api.post(f"/api/v1/runs/{before.pk}/baseline/")
    assert response.status_code == 200 and response.json()["is_baseline"] is True
    assert api.post(f"/api/v1/runs/{after.pk}/baseline/").json()["is_baseline"] is True
    before.refresh_from_db()
    assert not before.is_baseline  # one baseline per target and plan
    assert api.get(f"/api/v1/runs/{after.pk}/").json()["links"]["baseline"] == f"/api/v1/runs/{after.pk}/baseline/"
    assert api.delete(f"/api/v1/runs/{after.pk}/baseline/").json()["is_baseline"] is False

    assert token_client(outsider).post(f"/api/v1/runs/{before.pk}/baseline/").status_code == 404
    viewer = User.objects.create_user("vera")
    Membership.objects.create(team=team, user=viewer, role="viewer")
    assert token_client(viewer).post(f"/api/v1/runs/{before.pk}/baseline/").status_code == 403
    before.refresh_from_db()
    assert not before.is_baseline


def test_baseline_endpoint_is_in_the_schema_and_docs(client):
    from pathlib import Path

    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    ops = schema["paths"]["/api/v1/runs/{id}/baseline/"]
    assert {"post", "delete"} <= set(ops)
    assert "/api/v1/runs/{id}/repeat/" in schema["paths"]
    api_md = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    assert "POST /api/v1/runs/{id}/baseline/" in api_md and "DELETE /api/v1/runs/{id}/baseline/" in api_md
