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
