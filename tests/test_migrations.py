"""Data migrations keep what is stored: each is run forward over rows written before it."""
import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)


def migrate(to):
    executor = MigrationExecutor(connection)
    executor.migrate(to)
    executor.loader.build_graph()
    return executor.loader.project_state(to).apps


def test_level_status_is_filled_from_the_stored_level_documents():
    before, after = [("sweeps", "0005_raw_sample_chunk")], [("sweeps", "0006_level_status")]
    old = migrate(before)
    team = old.get_model("accounts", "Team").objects.create(name="t", slug="t")
    run = old.get_model("sweeps", "Run").objects.create(team=team)
    Level = old.get_model("sweeps", "Level")
    for index, status in enumerate(["completed", "aborted", "cancelled", None]):
        Level.objects.create(run=run, index=index, data={} if status is None else {"status": status})
    new = migrate(after)
    statuses = list(new.get_model("sweeps", "Level").objects.order_by("index").values_list("status", flat=True))
    assert statuses == ["completed", "aborted", "cancelled", "completed"]
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


def test_api_tokens_and_raw_samples_keep_their_rows_when_their_models_move():
    old = migrate([("api", "0001_initial"), ("accounts", "0001_initial"), ("sweeps", "0001_initial")])
    team = old.get_model("accounts", "Team").objects.create(name="t", slug="t")
    user = old.get_model("auth", "User").objects.create(username="u")
    token = old.get_model("api", "ApiToken").objects.create(user=user, name="ci", prefix="embp_x", digest="d" * 64)
    token.teams.add(team)
    run = old.get_model("sweeps", "Run").objects.create(team=team)
    old.get_model("api", "RawSampleChunk").objects.create(run=run, level_index=0, count=2, data=b"xx")
    new = migrate([("api", "0002_move_tokens_and_samples_out")])
    moved = new.get_model("accounts", "ApiToken").objects.get()
    assert (moved.name, moved.digest, list(moved.teams.values_list("name", flat=True))) == ("ci", "d" * 64, ["t"])
    assert new.get_model("sweeps", "RawSampleChunk").objects.get().count == 2
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


def test_the_summary_is_kept_once_in_its_column():
    old = migrate([("sweeps", "0008_run_heartbeat_worker_presence")])
    team = old.get_model("accounts", "Team").objects.create(name="t", slug="t")
    Run = old.get_model("sweeps", "Run")
    summary = {"peak_qps": 120.0, "peak_level": 8, "knee_level": 4, "slo_p99_ms": None, "slo_max_level": None}
    both = Run.objects.create(team=team, summary=summary, document={"summary": summary, "client": {"host": "h"}})
    # Written by an ingest that kept the summary in the document only.
    only_document = Run.objects.create(team=team, document={"summary": summary})
    untouched = Run.objects.create(team=team)
    new = migrate([("sweeps", "0009_run_summary_once")])
    rows = {run.pk: run for run in new.get_model("sweeps", "Run").objects.all()}
    assert (rows[both.pk].summary, rows[both.pk].document) == (summary, {"client": {"host": "h"}})
    assert (rows[only_document.pk].summary, rows[only_document.pk].document) == (summary, {})
    assert (rows[untouched.pk].summary, rows[untouched.pk].document) == ({}, {})
    back = migrate([("sweeps", "0008_run_heartbeat_worker_presence")])
    assert back.get_model("sweeps", "Run").objects.get(pk=both.pk).document["summary"] == summary
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


def test_runs_that_ended_before_verdicts_are_judged_once():
    old = migrate([("sweeps", "0012_plan_thresholds_run_verdict")])
    team = old.get_model("accounts", "Team").objects.create(name="t", slug="t")
    Run, Level = old.get_model("sweeps", "Run"), old.get_model("sweeps", "Level")
    plan = {"levels": [1, 4], "duration_s": 5}
    clean = Run.objects.create(team=team, status="succeeded", plan_config=plan)
    errored = Run.objects.create(team=team, status="succeeded", plan_config=plan)
    running = Run.objects.create(team=team, status="running", plan_config=plan)
    for run, rate in ((clean, 0.0), (errored, 0.3), (running, 0.0)):
        for index, load in enumerate((1, 4)):
            Level.objects.create(run=run, index=index, data={"concurrency": load, "status": "completed",
                                                             "error_rate": rate, "unreachable_s": 0.0})
    new = migrate([("sweeps", "0013_judge_finished_runs")])
    rows = {run.pk: run for run in new.get_model("sweeps", "Run").objects.all()}
    assert rows[clean.pk].verdict == "passed" and rows[clean.pk].verdict_detail["reasons"] == []
    assert rows[errored.pk].verdict == "failed"
    assert rows[errored.pk].verdict_detail["reasons"] == ["error rate <= 1 % breached at level 1 (30 %), 4 (30 %)"]
    assert rows[running.pk].verdict == ""
    back = migrate([("sweeps", "0012_plan_thresholds_run_verdict")])
    assert back.get_model("sweeps", "Run").objects.get(pk=errored.pk).verdict == ""
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
