"""The worker's tasks called in-process (Celery's eager apply) against the simulator.

These use `transactional_db`: the task's recorder writes from a thread of its own, which must see
committed rows.
"""
import socket
import threading
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from benchmarks.simulator import running_simulator
from portal.sweeps.models import Level, Plan, Run, Target
from portal.sweeps.services import create_run, request_cancel, start_run, sweep_time_limits
from workers.recorder import RECENT_POINTS, RunRecorder
from workers.tasks import probe_target, run_sweep


@pytest.fixture
def simulator():
    with running_simulator() as sim:
        yield sim


@pytest.fixture
def sim_target(team, simulator):
    return Target.objects.create(team=team, name="sim", base_urls=[simulator.base_url], model_name="sim-embed",
                                 engine="simulator")


@pytest.fixture
def short_plan(team):
    return Plan.objects.create(team=team, name="short", levels=[1, 2], warmup_s=0.2, duration_s=1, tokens=32,
                               dimensions=64, timeout_s=5)


def dead_url() -> str:
    """A base URL on a local port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_sweep_succeeds_and_stores_levels(transactional_db, sim_target, short_plan):
    run = create_run(target=sim_target, plan=short_plan, label="unit")
    assert run_sweep.apply(args=[run.pk]).get() == Run.Status.SUCCEEDED
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert run.started and run.finished and run.finished >= run.started
    assert run.worker_host
    levels = list(run.levels.order_by("index"))
    assert [level.concurrency for level in levels] == [1, 2]
    assert all(level.requests_ok > 0 and level.qps > 0 and level.latency_p99_ms > 0 for level in levels)
    assert all(level.error_rate == 0 for level in levels)
    assert "levels" not in run.document
    assert run.document["run"]["status"] == "succeeded"
    assert run.document["run"]["id"] == run.pk
    assert run.summary["peak_level"] in (1, 2) and "summary" not in run.document, "the summary is kept once"
    assert run.progress["phase"] == "done"
    assert run.progress["recent"], "per-second points for the live chart"
    assert {"t", "completed", "p99_ms", "level_index", "run_t"} <= set(run.progress["recent"][-1])


def test_dead_port_fails_with_actionable_reason(transactional_db, team, short_plan):
    url = dead_url()
    target = Target.objects.create(team=team, name="down", base_urls=[url], model_name="m")
    run = create_run(target=target, plan=short_plan)
    assert run_sweep.apply(args=[run.pk]).get() == Run.Status.FAILED
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert url.rsplit("/v1", 1)[0] in run.status_reason
    assert "Traceback" not in run.status_reason
    assert run.levels.count() == 0
    assert run.finished is not None


def test_unexpected_error_gives_short_reason_and_logs_traceback(transactional_db, sim_target, short_plan,
                                                                 monkeypatch, caplog):
    import workers.tasks

    def broken(*args, **kwargs):
        raise KeyError("no such key in the engine")

    monkeypatch.setattr(workers.tasks, "engine_run_sweep", broken)
    run = create_run(target=sim_target, plan=short_plan)
    run_sweep.apply(args=[run.pk])
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert "Internal error in the worker (KeyError" in run.status_reason
    assert "Traceback" not in run.status_reason
    assert "Traceback" in caplog.text


def test_cancel_stops_a_running_sweep(transactional_db, sim_target, team):
    plan = Plan.objects.create(team=team, name="long", levels=[1, 2], warmup_s=0, duration_s=30, tokens=32,
                               dimensions=64, timeout_s=5)
    run = create_run(target=sim_target, plan=plan)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(status=run_sweep.apply(args=[run.pk]).get()))
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.progress.get("phase") == "measure":
            break
        time.sleep(0.2)
    assert run.progress.get("phase") == "measure", run.progress
    request_cancel(run)
    thread.join(30)
    assert not thread.is_alive()
    run.refresh_from_db()
    assert outcome["status"] == Run.Status.CANCELLED
    assert run.status == Run.Status.CANCELLED
    assert run.status_reason.startswith("Cancelled on request; 0 levels had finished")
    # The level cut short is stored, marked cancelled, and the reason says so.
    assert [level.data["status"] for level in run.levels.all()] == ["cancelled"]
    assert "the level in progress is kept too, marked cancelled" in run.status_reason


def test_cancel_of_queued_run_is_immediate_and_the_message_is_skipped(transactional_db, sim_target, short_plan):
    run = create_run(target=sim_target, plan=short_plan)
    request_cancel(run)
    assert run.status == Run.Status.CANCELLED and run.finished is not None
    assert run_sweep.apply(args=[run.pk]).get() == Run.Status.CANCELLED
    assert Level.objects.filter(run=run).count() == 0


def test_redelivered_message_of_a_finished_run_is_skipped(transactional_db, sim_target, short_plan, monkeypatch):
    import workers.tasks

    run = create_run(target=sim_target, plan=short_plan)
    Run.objects.filter(pk=run.pk).update(status=Run.Status.SUCCEEDED, status_reason="kept")

    def must_not_run(*args, **kwargs):
        raise AssertionError("the engine ran again for a finished run")

    monkeypatch.setattr(workers.tasks, "engine_run_sweep", must_not_run)
    assert run_sweep.apply(args=[run.pk]).get() == Run.Status.SUCCEEDED
    run.refresh_from_db()
    assert run.status_reason == "kept"


def test_duplicate_of_a_live_run_is_left_alone_and_a_stale_one_interrupted(transactional_db, sim_target,
                                                                            short_plan):
    live = create_run(target=sim_target, plan=short_plan)
    Run.objects.filter(pk=live.pk).update(status=Run.Status.RUNNING, started=timezone.now(), worker_host="w@a",
                                          heartbeat=timezone.now())
    assert run_sweep.apply(args=[live.pk]).get() == "duplicate"
    live.refresh_from_db()
    assert live.status == Run.Status.RUNNING

    old = timezone.now() - timedelta(seconds=settings.EMBPERF_STALE_AFTER_S + 60)
    stale = create_run(target=sim_target, plan=short_plan)
    Run.objects.filter(pk=stale.pk).update(status=Run.Status.RUNNING, started=old, worker_host="w@b", heartbeat=old)
    assert run_sweep.apply(args=[stale.pk]).get() == Run.Status.INTERRUPTED
    stale.refresh_from_db()
    assert stale.status == Run.Status.INTERRUPTED
    assert "w@b" in stale.status_reason and "resume the run" in stale.status_reason
    # It ended when its worker was last heard from, not when the redelivery noticed.
    assert stale.finished == old


def test_worker_restart_interrupts_only_its_own_runs(db, target, plan):
    mine = create_run(target=target, plan=plan)
    other = create_run(target=target, plan=plan)
    Run.objects.filter(pk=mine.pk).update(status=Run.Status.RUNNING, worker_host="worker@gpu1")
    Run.objects.filter(pk=other.pk).update(status=Run.Status.RUNNING, worker_host="worker@gpu2",
                                           heartbeat=timezone.now())
    assert Run.objects.interrupt_of_node("worker@gpu1") == [mine.pk]
    mine.refresh_from_db()
    other.refresh_from_db()
    assert mine.status == Run.Status.INTERRUPTED and "worker@gpu1" in mine.status_reason
    assert other.status == Run.Status.RUNNING
    call_command("embperf_interrupt_stale")
    other.refresh_from_db()
    assert other.status == Run.Status.RUNNING  # its heartbeat is fresh


def test_start_run_enqueues_on_the_target_queue_with_time_limits(db, target, plan, enqueued,
                                                                 django_capture_on_commit_callbacks):
    target.queue = "gpu-host-7"
    target.save()
    with django_capture_on_commit_callbacks(execute=True):
        run = start_run(target=target, plan=plan, label="x", server_config={"--max-running-requests": "128"})
    soft, hard = sweep_time_limits(plan)
    assert enqueued == [{"name": run_sweep.name, "args": [run.pk], "queue": "gpu-host-7", "soft_time_limit": soft,
                         "time_limit": hard}]
    assert soft > plan.expected_seconds() and hard > soft
    assert run.status == Run.Status.QUEUED and run.server_config == {"--max-running-requests": "128"}


def test_start_run_with_broker_down_fails_the_run_with_the_reason(db, target, plan, monkeypatch,
                                                                  django_capture_on_commit_callbacks):
    from portal.taskqueue import app

    def refuse(*args, **kwargs):
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    monkeypatch.setattr(app, "send_task", refuse)
    with django_capture_on_commit_callbacks(execute=True):
        run = start_run(target=target, plan=plan)
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert "broker" in run.status_reason and "CELERY_BROKER_URL" in run.status_reason


def test_probe_stores_the_answer_with_a_timestamp(transactional_db, sim_target, team):
    probe_target.apply(args=[sim_target.pk])
    sim_target.refresh_from_db()
    assert sim_target.last_probe["ok"] is True
    assert sim_target.last_probe["served_model"] == "sim-embed"
    assert sim_target.last_probe["vector_length"] > 0
    assert sim_target.last_probe["at"]

    down = Target.objects.create(team=team, name="down", base_urls=[dead_url()], model_name="m")
    probe_target.apply(args=[down.pk])
    down.refresh_from_db()
    assert down.last_probe["ok"] is False
    assert down.last_probe["error"]


def test_recorder_keeps_one_point_per_second_and_at_most_300():
    recorder = RunRecorder(0, token=None)
    for t in range(RECENT_POINTS + 20):
        progress = {"level_index": 0, "load": 4, "run_elapsed_s": t, "phase": "measure",
                    "second": {"t": t, "completed": 10, "errors": 0, "p50_ms": 1.0, "p99_ms": 2.0, "in_flight": 4}}
        recorder.on_progress(progress)
        recorder.on_progress(progress)  # the same second reported twice
    snapshot = recorder.progress_snapshot()
    assert len(snapshot["recent"]) == RECENT_POINTS
    assert snapshot["recent"][-1]["t"] == RECENT_POINTS + 19
    assert snapshot["recent"][0]["t"] == 20
    assert snapshot["phase"] == "measure"
    # A second after the window closed (drain) holds only stragglers and is not charted.
    recorder.on_progress({"level_index": 0, "load": 4, "run_elapsed_s": 999, "phase": "drain",
                          "second": {"t": 999, "completed": 0, "errors": 0, "p50_ms": None, "p99_ms": None,
                                     "in_flight": 1}})
    snapshot = recorder.progress_snapshot()
    assert snapshot["recent"][-1]["t"] == RECENT_POINTS + 19 and snapshot["phase"] == "drain"


def test_bootstrap_creates_admin_once_and_the_demo_only_on_an_empty_database(db, capsys):
    from django.contrib.auth.models import User

    from portal.accounts.models import Team

    call_command("embperf_bootstrap")
    first = capsys.readouterr().out
    assert "password" in first
    admin = User.objects.get(username="admin")
    assert admin.is_superuser
    password = first.split("password:", 1)[1].split()[0]
    assert password not in admin.password and admin.check_password(password)
    demo = Team.objects.get(name="Demo")
    assert demo.memberships.get().user == admin
    target = demo.targets.get()
    assert target.base_urls == ["http://127.0.0.1:9100/v1"] and target.engine == "simulator"
    classic = demo.plans.get(name="Classic sweep")
    assert (classic.levels, classic.duration_s, classic.tokens, classic.dimensions, classic.timeout_s) == (
        [1, 4, 8, 16, 32, 64], 120, 512, None, 30)
    assert demo.plans.get(name="Smoke").dimensions is None
    search = demo.plans.get(search="capacity")
    assert (search.mode, search.slo_p99_ms, search.capacity_budget_s) == ("open", 500, 600)

    call_command("embperf_bootstrap")
    assert "password" not in capsys.readouterr().out
    assert User.objects.count() == 1 and Team.objects.count() == 1 and Plan.objects.count() == 3


def test_soft_time_limit_fails_the_run_with_a_reason(transactional_db, sim_target, short_plan, monkeypatch):
    from celery.exceptions import SoftTimeLimitExceeded

    import workers.tasks

    def too_slow(*args, **kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(workers.tasks, "engine_run_sweep", too_slow)
    run = create_run(target=sim_target, plan=short_plan)
    run_sweep.apply(args=[run.pk])
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert f"{sweep_time_limits(short_plan)[0]} s" in run.status_reason and "timeout" in run.status_reason


def test_raw_samples_are_stored_when_the_plan_keeps_them(transactional_db, sim_target, team):
    from portal.sweeps.samples import sample_count

    plan = Plan.objects.create(team=team, name="samples", levels=[1], warmup_s=0, duration_s=1, tokens=32,
                               dimensions=64, timeout_s=5, keep_samples=True)
    run = create_run(target=sim_target, plan=plan)
    assert run_sweep.apply(args=[run.pk]).get() == Run.Status.SUCCEEDED
    run.refresh_from_db()
    assert sample_count(run) >= run.levels.get().requests_ok > 0


def test_prometheus_target_gets_server_metrics_per_level(transactional_db, team, simulator, short_plan):
    target = Target.objects.create(team=team, name="sim+metrics", base_urls=[simulator.base_url],
                                   model_name="sim-embed", gpu_source=Target.GpuSource.PROMETHEUS,
                                   metrics_urls=[f"{simulator.url}/metrics"])
    run = create_run(target=target, plan=short_plan)
    assert run_sweep.apply(args=[run.pk]).get() == Run.Status.SUCCEEDED
    level = run.levels.order_by("index").first()
    assert level.data["server"]["source"] == f"{simulator.url}/metrics", level.data.get("telemetry_notes")
    assert level.data["server"]["timeseries"], "scraped during the measured window"


def test_second_sweep_of_a_busy_target_waits_instead_of_running_beside_it(transactional_db, sim_target, short_plan,
                                                                          monkeypatch):
    live = create_run(target=sim_target, plan=short_plan)
    Run.objects.filter(pk=live.pk).update(status=Run.Status.RUNNING, started=timezone.now(), worker_host="w@a",
                                          heartbeat=timezone.now())
    waiting = create_run(target=sim_target, plan=short_plan)
    retries = []

    def fake_retry(**kwargs):
        retries.append(kwargs)
        return RuntimeError("retry later")

    monkeypatch.setattr(run_sweep, "retry", fake_retry)
    result = run_sweep.apply(args=[waiting.pk])
    assert result.failed() and retries and retries[0]["countdown"] > 0
    waiting.refresh_from_db()
    assert waiting.status == Run.Status.QUEUED
    assert f"Waiting for run #{live.pk}" in waiting.status_reason
    assert not waiting.levels.exists()

    # However long the other run takes, the task keeps looking (Celery's default gives up after 3 retries;
    # tests/test_e2e_worker.py runs two sweeps of one target through a real worker).
    assert run_sweep.max_retries is None

    # Once the other run is over, the waiting one runs.
    Run.objects.filter(pk=live.pk).update(status=Run.Status.SUCCEEDED)
    assert run_sweep.apply(args=[waiting.pk]).get() == Run.Status.SUCCEEDED


def test_server_metrics_are_scraped_whatever_the_gpu_source(monkeypatch):
    from benchmarks import telemetry
    from benchmarks.outbound import OutboundPolicy
    from workers.tasks import build_telemetry_for

    calls = []

    def build(outbound, **kwargs):
        assert isinstance(outbound, OutboundPolicy)  # every scrape passes the installation's policy
        calls.append(kwargs)
        return kwargs

    monkeypatch.setattr(telemetry, "build_telemetry", build)
    url = "http://127.0.0.1:1/metrics"
    assert build_telemetry_for({"gpu_source": "none", "metrics_urls": []}) is None
    assert build_telemetry_for({"gpu_source": "none", "metrics_urls": [url]}) == {"gpus": None, "metrics_urls": [url]}
    assert build_telemetry_for({"gpu_source": "nvml", "gpus": [1], "metrics_urls": [url]}) == {
        "gpus": [1], "metrics_urls": [url]}
    assert build_telemetry_for({"gpu_source": "nvml", "gpus": []}) == {"gpus": [], "metrics_urls": []}
