from portal.sweeps.models import Run
from portal.sweeps.services import create_run, store_level


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


def test_store_level_is_idempotent(target, plan):
    run = create_run(target=target, plan=plan)
    doc = {"index": 0, "concurrency": 4, "qps": 100.0, "latency_ms": {"p99": 12.5}, "errors": {}, "error_rate": 0}
    store_level(run, doc)
    store_level(run, {**doc, "qps": 110.0})
    assert run.levels.count() == 1
    assert run.levels.get().qps == 110.0
    assert run.levels.get().latency_p99_ms == 12.5
