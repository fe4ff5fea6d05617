"""Recovery rules in-process: silent runs, cancel of a dead worker's run, the run page's heartbeat and
"no worker" note, database writes that reconnect, and results kept in files when the database stays
away. tests/test_e2e_faults.py injects the same faults into real processes."""
import json
import logging
import threading
import time
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db.utils import OperationalError
from django.urls import reverse
from django.utils import timezone

from benchmarks.control import CancelToken
from portal.sweeps.models import Run, WorkerPresence
from portal.sweeps.services import create_run, request_cancel
from tests.factories import level_docs
from workers import recorder as recorder_module
from workers import spill
from workers.database import DatabaseUnavailable, DatabaseWrites
from workers.recorder import RunRecorder
from workers.tasks import target_busy_with


def running(run: Run, *, heard_s_ago: float, node: str = "w@a") -> Run:
    beat = timezone.now() - timedelta(seconds=heard_s_ago)
    Run.objects.filter(pk=run.pk).update(status=Run.Status.RUNNING, started=beat - timedelta(seconds=5),
                                         heartbeat=beat, worker_host=node)
    run.refresh_from_db()
    return run


def test_a_silent_run_is_interrupted_whatever_its_node_and_ends_at_its_last_heartbeat(db, target, plan, settings):
    settings.EMBPERF_STALE_AFTER_S = 30
    silent = running(create_run(target=target, plan=plan), heard_s_ago=45, node="gone@old-host")
    live = running(create_run(target=target, plan=plan), heard_s_ago=2)
    assert list(Run.objects.stale()) == [silent]
    assert list(Run.objects.live()) == [live]
    assert Run.objects.interrupt_stale() == [silent.pk]
    silent.refresh_from_db()
    live.refresh_from_db()
    assert silent.status == Run.Status.INTERRUPTED and "gone@old-host" in silent.status_reason
    assert silent.finished == silent.heartbeat
    assert live.status == Run.Status.RUNNING
    # A run that ended meanwhile keeps its own ending.
    assert Run.objects.filter(pk=silent.pk).end_as(Run.Status.FAILED, "late") == []


def test_interrupt_stale_command_uses_the_same_rule(db, target, plan, settings):
    settings.EMBPERF_STALE_AFTER_S = 30
    silent = running(create_run(target=target, plan=plan), heard_s_ago=45)
    call_command("embperf_interrupt_stale", "--stale-after", "60")
    silent.refresh_from_db()
    assert silent.status == Run.Status.RUNNING  # 45 s is not past 60 s
    call_command("embperf_interrupt_stale")
    silent.refresh_from_db()
    assert silent.status == Run.Status.INTERRUPTED
    with pytest.raises(CommandError, match="would interrupt live runs"):
        call_command("embperf_interrupt_stale", "--stale-after", "1")


def test_cancel_of_a_live_run_asks_the_worker_and_of_a_silent_one_ends_it_at_once(db, target, plan, settings):
    settings.EMBPERF_STALE_AFTER_S = 30
    live = request_cancel(running(create_run(target=target, plan=plan), heard_s_ago=1))
    assert live.status == Run.Status.RUNNING and live.cancel_requested
    silent = running(create_run(target=target, plan=plan), heard_s_ago=40, node="w@dead")
    silent = request_cancel(silent)
    assert silent.status == Run.Status.CANCELLED
    assert "w@dead" in silent.status_reason and "last heard from 40 s ago" in silent.status_reason
    assert silent.finished == silent.heartbeat


def test_cancel_button_says_what_happened(client, owner, target, plan, settings):
    settings.EMBPERF_STALE_AFTER_S = 30
    client.force_login(owner)
    live = running(create_run(target=target, plan=plan), heard_s_ago=1)
    page = client.post(reverse("run-cancel", args=[live.pk]), follow=True).content.decode()
    assert "stops within a few seconds" in page
    silent = running(create_run(target=target, plan=plan), heard_s_ago=40)
    page = client.post(reverse("run-cancel", args=[silent.pk]), follow=True).content.decode()
    assert "stops within a few seconds" not in page and "ended at once" in page


def test_run_page_shows_the_heartbeat_age_and_a_silent_worker(client, owner, target, plan, settings):
    settings.EMBPERF_STALE_AFTER_S = 30
    client.force_login(owner)
    run = running(create_run(target=target, plan=plan), heard_s_ago=3)
    html = client.get(run.get_absolute_url()).content.decode()
    assert "Last heard" in html and "worker silent" not in html
    state = client.get(reverse("run-progress", args=[run.pk])).json()
    assert 2 <= state["heartbeat_age_s"] < 10 and state["worker_silent"] is False
    Run.objects.filter(pk=run.pk).update(heartbeat=timezone.now() - timedelta(seconds=50))
    html = client.get(run.get_absolute_url()).content.decode()
    assert "worker silent" in html
    assert client.get(reverse("run-progress", args=[run.pk])).json()["worker_silent"] is True


def test_queued_run_says_when_no_worker_listens_on_its_queue(client, owner, target, plan, settings):
    settings.EMBPERF_NO_WORKER_AFTER_S = 5
    client.force_login(owner)
    run = create_run(target=target, plan=plan)
    note = "No worker is listening on queue sweeps"
    assert note not in client.get(run.get_absolute_url()).content.decode()  # only a few seconds old
    Run.objects.filter(pk=run.pk).update(created=timezone.now() - timedelta(seconds=10))
    assert note in client.get(run.get_absolute_url()).content.decode()
    assert note in client.get(reverse("run-progress", args=[run.pk])).json()["waiting_note"]
    WorkerPresence.report("worker@gpu1", ["other", "sweeps"])
    assert client.get(reverse("run-progress", args=[run.pk])).json()["waiting_note"] == ""
    # A worker that stopped reporting is not listening any more.
    WorkerPresence.objects.update(seen=timezone.now() - timedelta(minutes=5))
    assert note in client.get(reverse("run-progress", args=[run.pk])).json()["waiting_note"]


def test_a_target_is_free_only_once_its_run_has_ended(db, target, plan, settings):
    settings.EMBPERF_STALE_AFTER_S = 30
    waiting = create_run(target=target, plan=plan)
    live = running(create_run(target=target, plan=plan), heard_s_ago=1)
    assert target_busy_with(waiting) == live.pk
    Run.objects.filter(pk=live.pk).update(heartbeat=timezone.now() - timedelta(seconds=60))
    assert target_busy_with(waiting) is None
    live.refresh_from_db()
    assert live.status == Run.Status.INTERRUPTED  # ended before its target was handed on


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_database_writes_back_off_and_warn_once_per_streak(db, caplog):
    clock = Clock()
    writes = DatabaseWrites("run 7", bound_s=10, clock=clock)

    def broken():
        raise OperationalError("terminating connection due to administrator command")

    caplog.set_level(logging.WARNING, logger="workers.database")
    pauses = []
    for _ in range(6):
        assert writes.attempt(broken) == (False, None)
        pauses.append(writes.seconds_to_next_try())
        assert not writes.ready()
        clock.now += pauses[-1]
    assert pauses == sorted(pauses) and pauses[0] < pauses[-1] <= 5.0  # a growing pause, capped
    assert sum("lost the database" in r.message for r in caplog.records) == 1
    assert writes.attempt(lambda: 42) == (True, 42)
    assert sum("answers again" in r.message for r in caplog.records) == 1
    assert not writes.is_down
    clock.now += 1
    writes.attempt(broken)
    clock.now += 11
    assert writes.exhausted
    with pytest.raises(DatabaseUnavailable, match="did not answer for 0 s"):
        DatabaseWrites("run 7", bound_s=0).call(broken)


def test_recorder_holds_levels_while_the_database_is_away_and_writes_them_after(transactional_db, target, plan,
                                                                                monkeypatch, caplog):
    run = running(create_run(target=target, plan=plan), heard_s_ago=0)
    away_until = time.monotonic() + 1.5
    calls = []
    real_store = recorder_module.record_level

    def flaky_store(run_, doc):
        calls.append(time.monotonic())
        if time.monotonic() < away_until:
            raise OperationalError("server closed the connection unexpectedly")
        return real_store(run_, doc)

    monkeypatch.setattr(recorder_module, "record_level", flaky_store)
    caplog.set_level(logging.WARNING)
    token = CancelToken()
    recorder = RunRecorder(run.pk, token, progress_interval_s=0.1, cancel_poll_s=0.1, heartbeat_s=0.2)
    recorder.start()
    for doc in level_docs((1, 4), duration_s=1):
        recorder.on_level(doc)
    time.sleep(2.5)
    assert recorder.close() == []
    assert [level.concurrency for level in run.levels.order_by("index")] == [1, 4]
    assert not recorder.database_lost and not token.cancelled
    # Backoff, not a busy loop: a handful of tries in 1.5 s, and one warning for the streak.
    assert 2 <= len([t for t in calls if t < away_until]) <= 10
    assert sum("lost the database" in r.message for r in caplog.records) == 1
    run.refresh_from_db()
    assert (timezone.now() - run.heartbeat).total_seconds() < 5


def test_recorder_stops_the_sweep_when_the_database_stays_away(transactional_db, target, plan, monkeypatch):
    run = running(create_run(target=target, plan=plan), heard_s_ago=0)

    def down(*args, **kwargs):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(recorder_module, "record_level", down)
    token = CancelToken()
    recorder = RunRecorder(run.pk, token, progress_interval_s=0.1, cancel_poll_s=0.1, db_retry_s=0.5)
    recorder.start()
    docs = level_docs((1,), duration_s=1)
    recorder.on_level(docs[0])
    assert token.wait(5), "the recorder stopped the sweep"
    recorder.close()
    assert recorder.database_lost
    assert [doc["index"] for doc in recorder.unsaved_levels()] == [0]


def test_results_saved_to_a_file_are_written_when_the_database_returns(db, target, plan, settings, tmp_path):
    settings.VAR_DIR = tmp_path
    run = running(create_run(target=target, plan=plan), heard_s_ago=100)
    Run.objects.interrupt_stale()  # the sweeper got there first
    path = spill.path_for(run.pk)
    assert path.parent == tmp_path / "unsaved"
    reason = f"The database was unreachable ... saved to {path}"
    sections = {"probe": {"ok": True, "vector_length": 128}, "client": {"version": "9.9.9"},
                "inputs": {"tokens": 64}, "telemetry": {"notes": ["no GPU source"]}}
    spill.save(path, run.pk, status=Run.Status.FAILED, reason=reason, levels=level_docs((1, 4), duration_s=1),
               document={"schema": "embperf.run/1", "levels": [], "summary": {"peak_qps": 12.5}, **sections},
               cause="The database was unreachable for over 30 s while this run was measured (OperationalError)",
               progress={"phase": "measure", "level_index": 1})
    assert spill.write_pending() == [run.pk]
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED and str(path) in run.status_reason
    assert "written back" in run.status_reason and "unreachable for over 30 s" in run.status_reason
    assert "writes them here once" not in run.status_reason
    assert run.levels.count() == 2
    assert run.summary == {"peak_qps": 12.5} and run.progress["phase"] == "done"
    document = run.to_document()
    assert {key: document[key] for key in sections} == sections
    assert run.client_version == "9.9.9"
    assert json.loads(path.read_text())["pending"] is False
    assert spill.write_pending() == []  # written once


def test_sigterm_during_an_eager_sweep_in_a_thread_does_not_install_handlers(transactional_db):
    # Signal handlers can only be set from the main thread; a sweep run from another thread must not try.
    from workers.tasks import Shutdown

    errors = []

    def arm():
        try:
            Shutdown(CancelToken()).arm().disarm()
        except Exception as exc:  # pragma: no cover - the failure this test guards against
            errors.append(exc)

    thread = threading.Thread(target=arm)
    thread.start()
    thread.join()
    assert errors == [] and Shutdown.active is None


@pytest.mark.parametrize("stop", [SystemExit, KeyboardInterrupt])
def test_a_sweep_stopped_by_systemexit_or_keyboardinterrupt_still_records_its_end(transactional_db, target, plan,
                                                                                   monkeypatch, stop):
    import workers.tasks
    from workers.tasks import execute_sweep

    def stopped(*args, **kwargs):
        raise stop()

    monkeypatch.setattr(workers.tasks, "engine_run_sweep", stopped)
    run = running(create_run(target=target, plan=plan), heard_s_ago=0, node="w@here")
    with pytest.raises(stop):
        execute_sweep(run.pk, node="w@here")
    run.refresh_from_db()
    assert run.status == Run.Status.INTERRUPTED
    assert f"w@here was stopped ({stop.__name__})" in run.status_reason


def test_a_database_away_past_the_bound_fails_the_run_and_keeps_its_levels_in_a_file(transactional_db, team,
                                                                                     settings, tmp_path,
                                                                                     monkeypatch):
    from benchmarks.simulator import running_simulator
    from portal.sweeps.models import Plan, Target
    from workers.tasks import run_sweep

    settings.VAR_DIR = tmp_path
    settings.EMBPERF_DB_RETRY_S = 0.5

    def down(*args, **kwargs):
        raise OperationalError("could not connect to server: Connection refused")

    # Only the recorder's level writes fail: the run's end can still be recorded, naming the file.
    monkeypatch.setattr(recorder_module, "record_level", down)
    with running_simulator() as sim:
        target = Target.objects.create(team=team, name="sim", base_urls=[sim.base_url], model_name="sim-embed")
        plan = Plan.objects.create(team=team, name="p", levels=[1, 2, 4], warmup_s=0.2, duration_s=1.5, tokens=32,
                                   dimensions=64, timeout_s=5)
        run = create_run(target=target, plan=plan)
        assert run_sweep.apply(args=[run.pk]).get() == Run.Status.FAILED
    run.refresh_from_db()
    files = list((tmp_path / "unsaved").glob(f"run-{run.pk}-*.json"))
    assert len(files) == 1
    assert "unreachable for over 0 s" in run.status_reason and str(files[0]) in run.status_reason
    body = json.loads(files[0].read_text())
    assert body["pending"] and body["levels"] and body["levels"][0]["concurrency"] == 1
    assert len(body["levels"]) < 3, "the sweep was stopped, not run to its end"
    # Once the database takes writes again, the worker's timer stores the kept levels.
    monkeypatch.undo()
    assert spill.write_pending() == [run.pk]
    assert run.levels.count() == len(body["levels"])


def test_a_pool_process_killed_by_the_hard_time_limit_or_lost_ends_its_run(transactional_db, target, plan):
    import socket

    from billiard.exceptions import WorkerLostError
    from celery.exceptions import TimeLimitExceeded
    from celery.signals import task_failure

    from workers.tasks import run_sweep

    node = socket.gethostname()  # what the hooks see outside a worker
    timed_out = running(create_run(target=target, plan=plan), heard_s_ago=2, node=node)
    run_sweep.on_failure(TimeLimitExceeded(300), "id-1", [timed_out.pk], {}, None)
    timed_out.refresh_from_db()
    assert timed_out.status == Run.Status.FAILED and "hard time limit" in timed_out.status_reason
    # A lost pool process reaches the main process as the task_failure signal only (no task hook).
    lost = running(create_run(target=target, plan=plan), heard_s_ago=2, node=node)
    task_failure.send(sender=run_sweep, task_id="id-2", args=[lost.pk], kwargs={},
                      exception=WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL)."))
    lost.refresh_from_db()
    assert lost.status == Run.Status.INTERRUPTED and "signal 9" in lost.status_reason
    assert "worker process measuring this run" in lost.status_reason
    assert lost.finished == lost.heartbeat
    # A run another node measures is not this process's to end (it held a duplicate message).
    elsewhere = running(create_run(target=target, plan=plan), heard_s_ago=2, node="other@host")
    task_failure.send(sender=run_sweep, task_id="id-4", args=[elsewhere.pk], kwargs={},
                      exception=WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL)."))
    elsewhere.refresh_from_db()
    assert elsewhere.status == Run.Status.RUNNING
    # Any other failure is the task's own business (it records its end itself).
    other = running(create_run(target=target, plan=plan), heard_s_ago=2, node=node)
    run_sweep.on_failure(ValueError("x"), "id-3", [other.pk], {}, None)
    task_failure.send(sender=run_sweep, task_id="id-3", args=[other.pk], kwargs={}, exception=ValueError("x"))
    other.refresh_from_db()
    assert other.status == Run.Status.RUNNING


def test_an_idle_recorder_does_not_spin_and_keeps_the_heartbeat_going(transactional_db, target, plan, monkeypatch):
    run = running(create_run(target=target, plan=plan), heard_s_ago=60)
    recorder = RunRecorder(run.pk, CancelToken(), progress_interval_s=0.1, cancel_poll_s=0.1, heartbeat_s=0.3)
    looks = []
    real = recorder._write_progress

    def counted(**kwargs):
        looks.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(recorder, "_write_progress", counted)
    started = time.monotonic()
    recorder.start()
    # The engine reports nothing: only heartbeats are due. Waits for two of them rather than a fixed second
    # (a loaded machine may run the recorder late), and bounds the looks by the time it actually took.
    deadline = started + 30
    while sum(1 for kwargs in list(looks) if kwargs["force"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(max(0.0, started + 1.0 - time.monotonic()))
    recorder.close()
    took = time.monotonic() - started
    assert sum(1 for kwargs in looks if kwargs["force"]) >= 2
    assert len(looks) <= 15 * took, f"{len(looks)} looks in {took:.1f} s"
    run.refresh_from_db()
    assert (timezone.now() - run.heartbeat).total_seconds() < 2


def test_a_sweep_whose_database_is_away_at_its_start_goes_back_to_the_broker(transactional_db, target, plan,
                                                                             monkeypatch):
    import workers.tasks
    from workers.tasks import run_sweep

    run = create_run(target=target, plan=plan)
    monkeypatch.setattr(workers.tasks, "START_DB_WAIT_S", 0.3)

    def away(self, operation, *, bound_s=None):
        raise DatabaseUnavailable("the database did not answer for 0 s (last error: OperationalError: refused)")

    retries = []

    def fake_retry(**kwargs):
        retries.append(kwargs)
        return RuntimeError("retry later")

    monkeypatch.setattr(DatabaseWrites, "call", away)
    monkeypatch.setattr(run_sweep, "retry", fake_retry)
    assert run_sweep.apply(args=[run.pk]).failed()
    assert retries and retries[0]["countdown"] > 0
    monkeypatch.undo()
    run.refresh_from_db()
    assert run.status == Run.Status.QUEUED


def test_no_run_is_judged_silent_until_the_database_has_been_back_for_a_stale_bound(db, target, plan, settings):
    from portal.sweeps.models import WorkerPresence, note_database_back
    from portal.sweeps.services import request_cancel

    settings.EMBPERF_STALE_AFTER_S = 30
    silent = running(create_run(target=target, plan=plan), heard_s_ago=45)
    # A worker saw the database come back 2 s ago: every heartbeat stopped with it, so nobody is silent yet.
    WorkerPresence.report("w@a", ["sweeps"], database_back_at=timezone.now() - timedelta(seconds=2))
    assert not silent.worker_is_silent()
    assert Run.objects.interrupt_stale() == []
    assert request_cancel(silent).status == Run.Status.RUNNING  # asked to stop, not ended "at once"
    # This process's own sighting counts the same.
    WorkerPresence.objects.update(database_back_at=None)
    note_database_back(timezone.now() - timedelta(seconds=5))
    assert Run.objects.filter(pk=silent.pk).stale().count() == 0
    # A stale bound after the database returned, silence counts again.
    from portal.sweeps import models

    models._database_back_at = timezone.now() - timedelta(seconds=31)
    assert silent.worker_is_silent()
    assert request_cancel(silent).status == Run.Status.CANCELLED
