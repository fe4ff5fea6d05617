"""Capacity over time: repeats of one capacity plan agree within their reported uncertainty, a slower
server's capacity is flagged on the history and the dashboard, the history charts it, and compare puts
capacities side by side ("-50 % capacity at p99 ≤ 750 ms").

The simulator in closed loop holds PER_BATCH requests per batch of BATCH_MS: c requests in flight take
ceil(c / PER_BATCH) batch times. Under an SLO of 2.5 batch times two batches pass and three fail, so
the capacity is 2 × PER_BATCH in flight; a server whose batches take 1.5 times as long passes one
batch only (1.5 < 2.5 < 3): PER_BATCH. The margins (half a batch on either side of the SLO, 150 ms)
are what a busy test host needs; so is the batch's 20 ms wait for requests to arrive, which gathers
the clients' next requests into one batch even when a loaded host sends them some milliseconds apart.
On a loaded host the boundary itself may still move by a request or two (a straggler that misses its
batch waits for the next): the tests assert what a user relies on, the verdicts, and the values only
as far as the host can hold them.
"""
import csv
import io
import uuid

import pytest
from django.urls import reverse

from benchmarks import capacity
from benchmarks.compare import capacity_delta, capacity_uncertainty
from benchmarks.simulator import running_simulator
from portal.history.comparison import build_comparison
from portal.history.timeline import build_history, dashboard_regressions
from portal.sweeps.models import Plan, Run, Target
from portal.sweeps.services import create_run
from workers.tasks import run_sweep

# Long texts: calibration lands within a few tokens of the plan's count, which at 512 tokens cannot move
# how many requests fit in a batch (10.5 texts' worth of tokens: always 10).
TOKENS = 512
PER_BATCH = 10
BATCH_MS = 300
SLO_MS = 2.5 * BATCH_MS


def server(batch_ms: float) -> dict:
    return {"batch_ms": batch_ms, "batch_wait_ms": 20, "token_us": 0, "native_dimensions": 16,
            "max_batch_tokens": PER_BATCH * TOKENS + TOKENS // 2}


# ---- the rule ---------------------------------------------------------------------------------

SLO = {"p99_ms": 200.0, "error_rate": 0.01, "goodput_share": None}


def answer(load, lowest_fail, **extra):
    return {"status": "found", "unit": "rate", "slo": SLO, "load": load, "lowest_fail": lowest_fail,
            "confirmed": True, **extra}


def test_capacities_within_their_uncertainty_are_the_same():
    # 40 passed and 42 failed, then 41 passed and 43 failed: the limits overlap.
    delta = capacity_delta(answer(40, 42), answer(41, 43))
    assert delta["verdict"] == "same" and delta["threshold"] == 2
    assert capacity_uncertainty(answer(40, 42)) == 2 and capacity_uncertainty(answer(40, None)) == 0


def test_a_capacity_below_the_baselines_uncertainty_and_floor_is_worse():
    delta = capacity_delta(answer(40, 42), answer(31, 33))
    assert delta["verdict"] == "worse" and round(delta["pct"]) == -22
    # A drop within 5 % of the baseline (no repeats) is not a verdict, even with exact answers.
    assert capacity_delta(answer(100, 100.5), answer(96, 96.5))["verdict"] == "same"


def test_repeats_spread_widens_the_threshold():
    base, cand = answer(100, 101), answer(90, 91)
    assert capacity_delta(base, cand)["verdict"] == "worse"
    assert capacity_delta(base, cand, base_spread=4.0, spread=4.0)["verdict"] == "same"  # 3 × 5.7 > 10


def test_no_capacity_other_slos_and_client_bound_answers():
    assert capacity_delta(answer(40, 42), answer(None, 5, status="none"))["verdict"] == "worse"
    other = answer(40, 42, slo={**SLO, "p99_ms": 300.0})
    assert capacity_delta(answer(40, 42), other) == {
        "verdict": "unknown", "diff": None, "pct": None, "threshold": None, "reason": "the searches had other SLOs"}
    bound = capacity_delta(answer(40, 42), answer(20, None, status="client_bound"))
    assert bound["verdict"] == "unknown" and "lower bound" in bound["reason"]


# ---- end to end: three searches through the worker task -----------------------------------------

@pytest.fixture(scope="module")
def searches(django_db_setup, django_db_blocker):
    """Two searches of one plan against the simulator, then one after its batches became 1.5 times
    slower, stored as one target's history (the first is the baseline)."""
    from django.contrib.auth.models import User

    from portal.accounts.models import Membership, Team

    keep = capacity.client_bound
    # The shared test host must not end a search as client-bound (test_engine_capacity tests that path).
    capacity.client_bound = lambda level: False
    try:
        with django_db_blocker.unblock(), running_simulator(**server(BATCH_MS)) as sim:
            team = Team.objects.create(name="capacity history", slug="capacity-history")
            user = User.objects.create_user("cap-owner", password="pw-cap-owner-1")
            Membership.objects.create(user=user, team=team, role=Membership.Role.OWNER)
            target = Target.objects.create(team=team, name="sim", base_urls=[sim.base_url], model_name="sim-embed",
                                           engine="simulator")
            plan = Plan.objects.create(team=team, name="capacity", search="capacity", mode="closed", levels=[],
                                       warmup_s=0.3, duration_s=1.0, tokens=TOKENS, dimensions=16, timeout_s=10,
                                       input_mode="repeat", abort_error_rate=1.0, slo_p99_ms=SLO_MS,
                                       capacity_trials=2)
            runs = []
            for batch_ms, label in ((BATCH_MS, "first"), (BATCH_MS, "repeat"), (BATCH_MS * 1.5, "slower")):
                sim.config.batch_ms = batch_ms  # read by the simulator at every batch
                run = create_run(target=target, plan=plan, label=label, user=user)
                assert run_sweep.apply(args=[run.pk]).get() == Run.Status.SUCCEEDED
                runs.append(run)
            Run.objects.filter(pk=runs[0].pk).update(is_baseline=True)
            yield {"team": team, "user": user, "plan": plan, "target": target,
                   "runs": [Run.objects.get(pk=r.pk) for r in runs]}
            Run.objects.filter(team=team).delete()
            target.delete()
            plan.delete()
            team.delete()
            user.delete()
    finally:
        capacity.client_bound = keep


def test_a_repeat_lands_within_the_reported_uncertainty(searches):
    first, repeat, slower = (r.capacity_answer for r in searches["runs"])
    assert 2 * PER_BATCH - 2 <= first["load"] <= 2 * PER_BATCH, first
    assert PER_BATCH - 2 <= slower["load"] <= PER_BATCH, slower
    gap = max(capacity_uncertainty(first), capacity_uncertainty(repeat))
    assert abs(repeat["load"] - first["load"]) <= gap, (first, repeat)
    assert capacity_delta(first, repeat)["verdict"] == "same"


@pytest.mark.django_db
def test_history_and_dashboard_flag_the_slower_server_only(searches):
    first, repeat, slower = searches["runs"]
    history = build_history(Run.objects.filter(team=searches["team"]))
    flagged = {p.id: p.regressions for p in history.points if p.regressions}
    assert list(flagged) == [slower.pk], flagged
    base, low = first.capacity_answer["load"], slower.capacity_answer["load"]
    pct = round((low - base) / base * 100)
    assert flagged[slower.pk] == [f"Capacity {pct:+d} % at p99 ≤ {SLO_MS:g} ms, error rate ≤ 1.00% "
                                  f"({base:g} → {low:g} in flight, beyond ±{max(1, 0.05 * base):.3g})"], flagged
    assert [p.id for p in dashboard_regressions(Run.objects.filter(team=searches["team"]))] == [slower.pk]


@pytest.mark.django_db
def test_the_history_page_charts_capacity_over_time(client, searches):
    client.force_login(searches["user"])
    page = client.get(reverse("history") + f"?target={searches['target'].pk}&plan={searches['plan'].pk}")
    charts = {c["id"]: c for c in page.context["charts"]}
    chart = charts["history-capacity"]
    assert chart["title"] == f"Capacity within the SLO (p99 ≤ {SLO_MS:g} ms, error rate ≤ 1.00%)"
    assert [p["y"] for p in chart["datasets"][0]["data"]] == [r.capacity_answer["load"] for r in searches["runs"]]
    # Each answer's uncertainty is drawn as a band from its capacity to its lowest failing load.
    assert [(b["low"], b["high"]) for b in chart["bands"]] == [
        (r.capacity_answer["load"], r.capacity_answer["lowest_fail"]) for r in searches["runs"]]
    html = page.content.decode()
    assert "capacity-cell" in html and "fails at" in html


@pytest.mark.django_db
def test_compare_puts_capacities_side_by_side(client, searches):
    first, _, slower = searches["runs"]
    client.force_login(searches["user"])
    url = reverse("compare") + f"?runs={first.pk},{slower.pk}&baseline={first.pk}"
    page = client.get(url)
    base, low = first.capacity_answer["load"], slower.capacity_answer["load"]
    change = f"{(low - base) / base * 100:+.0f} % capacity at p99 ≤ {SLO_MS:g} ms, error rate ≤ 1.00%"
    capacity_cells = page.context["comparison"]["capacity"]["cells"]
    assert capacity_cells[1]["text"] == change and capacity_cells[1]["delta"]["verdict"] == "worse"
    assert change in page.content.decode()
    markdown = client.get(url + "&format=md").content.decode()
    assert markdown.startswith(f"**Capacity**: #{first.pk} first {base:g} in flight (baseline); #{slower.pk} slower "
                               f"{low:g} in flight, {change} \\*.")
    rows = list(csv.reader(io.StringIO(client.get(url + "&format=csv").content.decode())))
    line = next(r for r in rows if r[:2] == ["run", "capacity"])
    assert line[2:5] == ["concurrency", f"{base:g}", f"{low:g}"] and float(line[5]) == low - base
    assert line[7] == "true"


@pytest.mark.django_db
def test_the_dashboard_lists_capacities_and_the_capacity_regression(client, searches):
    client.force_login(searches["user"])
    page = client.get(reverse("dashboard"))
    assert page.context["recent_capacity"] is True
    assert [r["capacity"] for r in page.context["recent"]] == [
        r.capacity_answer["load"] for r in reversed(searches["runs"])]
    assert [p.id for p in page.context["regressions"]] == [searches["runs"][2].pk]
    assert "Capacity -" in page.content.decode()


@pytest.mark.django_db
def test_a_slower_run_in_the_baselines_segment_does_not_widen_the_baselines_noise(searches):
    """Two repeats after the baseline make three counting runs in its segment with the slower one: the
    baseline's capacity spread is taken without the run judged against it, so the slower run stays
    flagged (with it, consecutive differences 0 and 10 would give a spread of 5 and hide it)."""
    first, repeat, slower = searches["runs"]
    extra = Run.objects.get(pk=repeat.pk)
    extra.pk = None
    extra.uuid = uuid.uuid4()
    extra.label = "repeat 2"
    extra.is_baseline = False
    extra.save()
    try:
        Run.objects.filter(pk=extra.pk).update(created=repeat.created)
        history = build_history(Run.objects.filter(team=searches["team"]))
        assert [p.id for p in history.points if p.regressions] == [slower.pk]
        comparison = build_comparison([first, slower], first)
        assert comparison.capacity()["cells"][1]["delta"]["verdict"] == "worse"
    finally:
        extra.delete()

