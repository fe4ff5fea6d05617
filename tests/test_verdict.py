"""Thresholds and verdicts: the plan rule for thresholds and the abort window, the judgement of a run,
peak/knee/SLO level without errored levels, and the verdict in the API, the pages and the exports."""
import csv
import io

import pytest
from django.urls import reverse

from benchmarks.document import summarize
from benchmarks.errors import ConfigError
from benchmarks.plan import DEFAULT_THRESHOLDS, normalize_plan, plan_errors
from benchmarks.verdict import errored, judge
from portal.sweeps.models import Plan, Run
from tests.api_support import token_client
from tests.factories import level_doc, level_docs, stored_run


def killed_sweep_levels():
    """The finding: a sweep of 1-64 with 5 s levels whose server was killed 17 s in. Level 8 had 56 %
    errors (and the lowest p99 of the later levels), 16-64 are all connect_error."""
    docs = [level_doc(i, c, duration_s=5, seed=3) for i, c in enumerate((1, 2, 4, 8))]
    docs[3].update(error_rate=0.56, unreachable_s=2.2)
    docs[3]["latency_ms"] = dict(docs[3]["latency_ms"], p99=40.0)
    for i, c in enumerate((16, 32, 64), start=4):
        doc = level_doc(i, c, duration_s=5, seed=3)
        doc.update(requests_ok=0, requests_failed=120, qps=0.0, texts_per_s=0.0, tokens_per_s=0.0, error_rate=1.0,
                   unreachable_s=5.0, latency_ms={k: None for k in doc["latency_ms"]},
                   errors={**doc["errors"], "http_5xx": 0, "connect_error": 120})
        docs.append(doc)
    return docs


# ---- the plan rule ------------------------------------------------------------------------------

def test_a_plan_without_thresholds_has_the_default_one():
    assert normalize_plan({"levels": [1, 4]})["thresholds"] == list(DEFAULT_THRESHOLDS)
    assert DEFAULT_THRESHOLDS[0] == {"figure": "error_rate", "op": "<=", "limit": 0.01, "levels": None}


def test_thresholds_are_read_from_text_and_checked_against_the_plans_levels():
    plan = normalize_plan({"levels": [1, 16, 32], "thresholds": ["p99_ms <= 500 at 16, 32", "qps>=100",
                                                                 {"figure": "tokens_per_s", "limit": 5000}]})
    assert plan["thresholds"] == [
        {"figure": "p99_ms", "op": "<=", "limit": 500.0, "levels": [16, 32]},
        {"figure": "qps", "op": ">=", "limit": 100.0, "levels": None},
        {"figure": "tokens_per_s", "op": ">=", "limit": 5000.0, "levels": None},
    ]


@pytest.mark.parametrize("thresholds, words", [
    (["latency <= 5"], "Thresholds can be set on p50_ms"),
    (["p99_ms >= 500"], "p99_ms is an upper bound"),
    (["qps <= 5"], "qps is a lower bound"),
    (["error_rate <= 1.5"], "at most 1"),
    (["p99_ms <= 0"], "greater than 0"),
    (["p99_ms <= 500 at 8"], "names level 8, which the plan does not have"),
    (["p99_ms"], "Write a threshold as"),
    ([f"p99_ms <= {n}" for n in range(1, 40)], "At most 32 thresholds"),
    ([{"figure": "p99_ms", "limit": 5, "colour": "red"}], "colour is not one"),
])
def test_a_bad_threshold_is_refused_with_a_message_that_says_why(thresholds, words):
    _, errors = plan_errors({"levels": [1, 16], "thresholds": thresholds})
    assert words in errors["thresholds"][0]


def test_the_abort_window_never_exceeds_the_level():
    # The finding's plan: 5 s levels with the default 10 s window, which could never fill.
    plan = normalize_plan({"levels": [1, 2], "duration_s": 5})
    assert plan["abort_window_s"] == 5
    assert normalize_plan({"levels": [1], "duration_s": 5, "abort_window_s": 3})["abort_window_s"] == 3
    assert normalize_plan({"levels": [1], "duration_s": 120})["abort_window_s"] == 10


def test_the_plan_form_says_the_abort_window_is_cut_to_the_duration(client, owner, team):
    client.force_login(owner)
    page = client.get(reverse("plan-create")).content.decode()
    assert "Never longer than the measured duration" in page
    assert "error_rate &lt;= 0.01 at every level" in page or "error_rate <= 0.01 at every level" in page


# ---- the judgement --------------------------------------------------------------------------------

def test_the_killed_server_sweep_fails_naming_unreachable_and_the_error_rate():
    plan = normalize_plan({"levels": [1, 2, 4, 8, 16, 32, 64], "duration_s": 5, "slo_p99_ms": 500})
    verdict = judge(plan, killed_sweep_levels(), status="succeeded")
    assert verdict["verdict"] == "failed"
    assert verdict["unreachable_s"] == 17.2
    assert "error rate <= 1 % breached at level 8 (56 %), 16 (100 %), 32 (100 %), 64 (100 %)" in verdict["reasons"]
    assert "target unreachable for 17.2 s" in verdict["reasons"]


def test_no_slo_level_peak_or_knee_is_taken_from_an_errored_level():
    docs = killed_sweep_levels()
    summary = summarize(docs, 500, None)
    assert summary["slo_max_level"] == 4  # not 8, which had 56 % errors
    assert summary["peak_level"] != 8 and summary["knee_level"] != 8
    assert summary["errored_levels"] == [8, 16, 32, 64]
    # Guard: counted, level 8 would be the SLO level (the finding).
    clean = [dict(lv, error_rate=0.0) for lv in docs]
    assert summarize(clean, 500, None)["slo_max_level"] == 8


def test_a_level_is_errored_by_the_plans_own_error_rate_threshold():
    level = dict(level_doc(0, 16), error_rate=0.04)
    assert errored(level, None)  # the default: above 1 %
    assert not errored(level, [{"figure": "error_rate", "op": "<=", "limit": 0.05, "levels": None}])
    # a threshold on other levels leaves this one under the default
    assert errored(level, [{"figure": "error_rate", "op": "<=", "limit": 0.05, "levels": [64]}])


def test_each_breached_threshold_is_named_and_a_clean_run_passes():
    docs = level_docs((1, 4, 16), base_ms=20)
    plan = normalize_plan({"levels": [1, 4, 16]})
    assert judge(plan, docs, status="succeeded") == {
        "verdict": "passed", "reasons": [], "unreachable_s": 0.0, "thresholds": ["error_rate <= 0.01"]}
    p99_at_16 = docs[2]["latency_ms"]["p99"]
    plan = normalize_plan({"levels": [1, 4, 16], "thresholds": [
        f"p99_ms <= {p99_at_16 - 1} at 16", "qps >= 90000", f"p99_ms <= {p99_at_16 + 1}"]})
    verdict = judge(plan, docs, status="succeeded")
    assert verdict["verdict"] == "failed"
    assert verdict["reasons"][0].startswith(f"p99 latency <= {p99_at_16 - 1:.4g} ms at 16 breached at level 16 (")
    assert verdict["reasons"][1].startswith("requests/s >= 9e+04 requests/s breached at level 1 (")
    assert len(verdict["reasons"]) == 2  # the loose p99 threshold holds


def test_a_run_that_did_not_measure_every_level_fails():
    docs = level_docs((1, 4))
    plan = normalize_plan({"levels": [1, 4, 16]})
    assert judge(plan, docs, status="interrupted")["reasons"] == ["the run was interrupted: 2 of 3 levels measured"]
    docs[1]["status"] = "aborted"
    aborted = judge(plan, docs, status="succeeded", aborted_at_level=4)
    assert aborted["reasons"] == ["the abort policy stopped the sweep at level 4; 1 of 3 levels were not measured"]


def test_the_abort_policy_fires_within_short_levels_against_a_dead_target():
    """Engine end to end: with 2 s levels and the default 10 s window (cut to 2 s), a target that refuses
    every connection from the second level on stops the sweep there; before the rule, the window
    could never fill, the sweep ran every level and "succeeded"."""
    from benchmarks.simulator import running_simulator
    from benchmarks.sweep import run_sweep

    with running_simulator(batch_ms=1, token_us=0) as sim:
        def kill_after_first(level):
            if level["index"] == 0:
                sim.refuse_now(600)

        doc = run_sweep({"name": "sim", "flavor": "openai", "base_urls": [sim.base_url], "model": "sim-embed"},
                        {"levels": [1, 2, 4], "warmup_s": 0, "duration_s": 2, "tokens": 16, "dimensions": 64},
                        on_level=kill_after_first)
    assert doc["plan"]["abort_window_s"] == 2
    assert doc["run"]["aborted_at_level"] == 2
    assert [lv["status"] for lv in doc["levels"]] == ["completed", "aborted"]
    assert doc["run"]["verdict"] == "failed"
    assert doc["run"]["unreachable_s"] > 1
    assert any(r.startswith("target unreachable for") for r in doc["run"]["verdict_reasons"])
    assert any("abort policy stopped the sweep at level 2" in r for r in doc["run"]["verdict_reasons"])
    assert doc["summary"]["errored_levels"] == [2]


# ---- the portal -----------------------------------------------------------------------------------

@pytest.fixture
def killed(target, team):
    plan = Plan.objects.create(team=team, name="1-64", levels=[1, 2, 4, 8, 16, 32, 64], warmup_s=1,
                               duration_s=5, slo_p99_ms=500)
    docs = killed_sweep_levels()
    run = stored_run(target=target, plan=plan, docs=docs)
    run.summary = summarize(docs, 500, None)
    run.save(update_fields=["summary"])
    assert run.verdict == "failed"
    return run


@pytest.mark.django_db
def test_the_api_gives_the_verdict_beside_the_status(owner, killed):
    body = token_client(owner).get(f"/api/v1/runs/{killed.pk}/").json()
    assert body["status"] == "succeeded" and body["verdict"] == "failed"
    assert "target unreachable for 17.2 s" in body["verdict_reasons"]
    assert body["unreachable_s"] == 17.2
    listed = token_client(owner).get("/api/v1/runs/").json()["results"]
    assert {r["id"]: r["verdict"] for r in listed}[killed.pk] == "failed"
    assert Run.objects.get(pk=killed.pk).verdict == "failed"  # judged when it ended, then stored



@pytest.mark.django_db
def test_the_run_list_filters_on_the_verdict(owner, target, plan, killed):
    clean = stored_run(target=target, plan=plan, docs=level_docs((1, 4)))
    interrupted = stored_run(target=target, plan=plan, docs=level_docs((1,)), status="interrupted")
    api = token_client(owner)

    def ids(verdict):
        return {r["id"] for r in api.get(f"/api/v1/runs/?verdict={verdict}").json()["results"]}

    # the interrupted run was never judged: the filter knows it fails all the same
    assert Run.objects.get(pk=interrupted.pk).verdict == ""
    assert ids("failed") == {killed.pk, interrupted.pk}
    assert ids("passed") == {clean.pk}
    assert api.get("/api/v1/runs/?verdict=maybe").status_code == 400
    # a run that ended without being judged is judged when first read, then stored
    assert api.get(f"/api/v1/runs/{interrupted.pk}/").json()["verdict_reasons"] == [
        "the run was interrupted: 1 of 2 levels measured"]
    assert Run.objects.get(pk=interrupted.pk).verdict == "failed"


@pytest.mark.django_db
def test_exports_carry_the_verdict(owner, killed):
    api = token_client(owner)
    doc = api.get(f"/api/v1/runs/{killed.pk}/export/").json()
    assert doc["run"]["verdict"] == "failed" and doc["run"]["unreachable_s"] == 17.2
    assert any(r.startswith("error rate <= 1 % breached at level 8 (56 %)") for r in doc["run"]["verdict_reasons"])
    rows = list(csv.DictReader(io.StringIO(api.get(f"/api/v1/runs/{killed.pk}/export/?format=csv").content.decode())))
    assert {row["run_verdict"] for row in rows} == {"failed"}
    assert "target unreachable for 17.2 s" in rows[0]["run_verdict_reasons"]
    assert rows[0]["run_unreachable_s"] == "17.2"
    markdown = api.get(f"/api/v1/runs/{killed.pk}/export/?format=md").content.decode()
    assert "verdict **failed**" in markdown.splitlines()[0]
    assert "Verdict failed: " in markdown and "target unreachable for 17.2 s" in markdown


@pytest.mark.django_db
def test_the_run_page_and_list_show_verdict_and_unreachable_time(client, owner, killed):
    client.force_login(owner)
    page = client.get(reverse("run-detail", args=[killed.pk])).content.decode()
    assert 'id="run-verdict"' in page and ">failed</span></h1>" in page
    assert "The target refused connections for 17.2 s" in page
    assert "target unreachable for 17.2 s" in page
    summary = page.split('id="run-summary"')[1].split("</div>\n</div>")[0]
    assert "Highest level with p99" in summary and '<div class="stat-value">4</div>' in summary
    assert "Left out of the peak, the knee and the SLO level" in page and "concurrency 8, 16, 32, 64." in page
    listing = client.get(reverse("run-list")).content.decode()
    assert 'verdict" title="' in listing and ">failed</span>" in listing


@pytest.mark.django_db
def test_thresholds_are_editable_through_the_api_with_the_rules_messages(owner, team):
    api = token_client(owner)
    created = api.post("/api/v1/plans/", {"name": "gated", "levels": [1, 16], "duration_s": 5,
                                          "thresholds": ["p99_ms <= 500 at 16", {"figure": "qps", "limit": 100}]},
                       format="json")
    assert created.status_code == 201, created.content
    assert created.json()["thresholds"] == [{"figure": "p99_ms", "op": "<=", "limit": 500.0, "levels": [16]},
                                            {"figure": "qps", "op": ">=", "limit": 100.0, "levels": None}]
    assert Plan.objects.get(pk=created.json()["id"]).to_spec()["thresholds"][0]["levels"] == [16]
    refused = api.post("/api/v1/plans/", {"name": "bad", "levels": [1], "thresholds": ["p99_ms <= 500 at 16"]},
                       format="json")
    assert refused.status_code == 400
    assert "names level 16, which the plan does not have" in refused.json()["thresholds"][0]
    default = api.post("/api/v1/plans/", {"name": "plain", "levels": [1]}, format="json").json()
    assert default["thresholds"] == list(DEFAULT_THRESHOLDS)


@pytest.mark.django_db
def test_thresholds_are_editable_on_the_plan_form(client, owner, team):
    client.force_login(owner)
    form = {"team": team.pk, "name": "form-gated", "mode": "closed", "levels": "1, 16", "arrival": "poisson",
            "warmup_s": 1, "duration_s": 5, "tokens": 64, "batch": 1, "encoding": "float", "timeout_s": 30,
            "abort_error_rate": 0.5, "abort_window_s": 10, "input_mode": "unique", "processes": 1,
            "thresholds": "p99_ms <= 250\nerror_rate <= 0.05 at 16"}
    response = client.post(reverse("plan-create"), form)
    assert response.status_code == 302, response.content.decode()[:2000]
    plan = Plan.objects.get(name="form-gated")
    assert plan.thresholds[1] == {"figure": "error_rate", "op": "<=", "limit": 0.05, "levels": [16]}
    detail = client.get(plan.get_absolute_url()).content.decode()
    assert "p99 latency &lt;= 250 ms" in detail and "error rate &lt;= 5 % at 16" in detail
    assert "cut to the measured duration" in detail
    bad = client.post(reverse("plan-create"), dict(form, name="bad", thresholds="p99_ms >= 5"))
    assert bad.status_code == 200 and "p99_ms is an upper bound" in bad.content.decode()


def test_configerror_is_the_plan_rules_error():
    with pytest.raises(ConfigError):
        normalize_plan({"levels": [1], "thresholds": ["nonsense"]})


@pytest.mark.django_db
def test_the_run_page_names_gauges_that_did_not_follow_and_withholds_them(client, owner, target, plan):
    note = ("the server's running/waiting gauges did not follow the 4 requests in flight: running and waiting "
            "stayed at 0 while requests took 80 ms against 20 ms for an idle one, so they are not shown")
    docs = level_docs((1, 4))
    docs[1]["server"] = {
        "source": "http://gpu:8000/metrics", "sources": ["http://gpu:8000/metrics"], "engines": ["vllm"],
        "queue_depth": {"mean": None, "max": None}, "running": {"mean": None, "max": None},
        "gauges_followed": False, "gauges_reported": {"running": {"mean": 0.0, "max": 0.0},
                                                      "queue_depth": {"mean": 0.0, "max": 0.0}},
        "prompt_tokens_delta": None, "client_prompt_tokens": 1000, "prompt_tokens_ratio": None,
        "tokens_counter_followed": False, "batch_size_mean": None, "samples": 8, "timeseries": [],
        "cross_checks": [note]}
    docs[1]["notes"] = [note]
    docs[0]["server"] = dict(docs[1]["server"], queue_depth={"mean": 0.0, "max": 0.0},
                             running={"mean": 0.8, "max": 1.0}, cross_checks=[], prompt_tokens_delta=998,
                             prompt_tokens_ratio=0.998)
    for key in ("gauges_followed", "gauges_reported", "tokens_counter_followed"):
        del docs[0]["server"][key]
    run = stored_run(target=target, plan=plan, docs=docs)
    client.force_login(owner)
    page = client.get(reverse("run-detail", args=[run.pk])).content.decode()
    assert "gauges did not follow the load" in page and "counter did not move" in page
    assert "running/waiting gauges did not follow the 4 requests in flight" in page
    row = page.split('id="telemetry-table"')[1].split('data-level="1"')[1].split("</tr>")[0]
    assert "0 / 0" not in row and "gauges did not follow the load" in row
