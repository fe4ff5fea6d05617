from portal.sweeps.documents import record_level
from portal.sweeps.models import Run
from portal.sweeps.services import create_run


def test_run_snapshots_target_and_plan(target, plan, owner):
    run = create_run(target=target, plan=plan, user=owner, label="before")
    target.model_name = "renamed"
    target.save()
    run.refresh_from_db()
    assert run.target_config["model"] == "sim-embed"
    assert run.plan_config["levels"] == [1, 4]
    assert run.status == Run.Status.QUEUED


def test_target_api_key_is_encrypted_and_not_snapshotted(target, plan):
    from django.db import connection

    target.api_key = "sk-secret"
    target.save()
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key FROM sweeps_target WHERE id = %s", [target.pk])
        stored = cursor.fetchone()[0]
    assert "sk-secret" not in stored
    target.refresh_from_db()
    assert target.api_key == "sk-secret"
    run = create_run(target=target, plan=plan)
    assert "api_key" not in run.target_config


def test_record_level_is_idempotent(target, plan):
    run = create_run(target=target, plan=plan)
    doc = {"index": 0, "concurrency": 4, "qps": 100.0, "latency_ms": {"p99": 12.5}, "errors": {}, "error_rate": 0}
    record_level(run, doc)
    record_level(run, {**doc, "qps": 110.0})
    assert run.levels.count() == 1
    assert run.levels.get().qps == 110.0
    assert run.levels.get().latency_p99_ms == 12.5


def test_level_keeps_its_status_and_its_load(target, plan):
    run = create_run(target=target, plan=plan)
    closed = record_level(run, {"index": 0, "concurrency": 4, "rate": None, "status": "aborted", "qps": 1.0})
    opened = record_level(run, {"index": 1, "concurrency": None, "rate": 2.5, "qps": 1.0})
    assert (closed.status, closed.load) == ("aborted", 4)
    assert (opened.status, opened.load) == ("completed", 2.5)  # a document without a status completed


def test_run_figures_come_from_its_stored_summary(target, plan):
    run = create_run(target=target, plan=plan)
    assert run.figures == {"peak_qps": None, "peak_level": None, "knee_level": None, "slo_max_level": None}
    run.summary = {"peak_qps": 300.0, "peak_level": 8, "knee_level": 4, "slo_p99_ms": 50, "slo_max_level": 4}
    assert run.figures == {"peak_qps": 300.0, "peak_level": 8, "knee_level": 4, "slo_max_level": 4}
