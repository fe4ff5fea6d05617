"""Shared fixtures: an owner, a team member and an outsider, with a target and a plan."""
import pytest


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Throttles (Test connection, the API) count per user in the cache, and user ids repeat across tests."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _no_database_outage_seen():
    """The rule for "silent" remembers, per process, when the database last came back (a test may fake an outage)."""
    from portal.sweeps import models

    models._database_back_at = None
    yield
    models._database_back_at = None


@pytest.fixture
def fresh_throttles():
    """Throttle history lives in the cache and user ids repeat across tests: start each test clean."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def enqueued(monkeypatch):
    """The tasks the portal hands to the workers, recorded instead of sent: [{"name", "args", **options}]."""
    from portal.taskqueue import app

    calls = []
    monkeypatch.setattr(app, "send_task", lambda name, args=None, **options: calls.append(
        {"name": name, "args": args, **options}))
    return calls


@pytest.fixture
def team(db):
    from portal.accounts.models import Team

    return Team.objects.create(name="Alice's team")


@pytest.fixture
def other_team(db):
    from portal.accounts.models import Team

    return Team.objects.create(name="Charlie's team")


def _user(username, team, role):
    from django.contrib.auth.models import User

    from portal.accounts.models import Membership

    user = User.objects.create_user(username=username, email=f"{username}@example.org", password="password")
    if team is not None:
        Membership.objects.create(team=team, user=user, role=role)
    return user


@pytest.fixture
def owner(team):
    return _user("alice", team, "owner")


@pytest.fixture
def member(team):
    return _user("bob", team, "member")


@pytest.fixture
def outsider(other_team):
    return _user("charlie", other_team, "owner")


@pytest.fixture
def target(team):
    from portal.sweeps.models import Target

    return Target.objects.create(
        team=team,
        name="sim",
        flavor="openai",
        base_urls=["http://127.0.0.1:9100/v1"],
        model_name="sim-embed",
        engine="simulator",
    )


@pytest.fixture
def plan(team):
    from portal.sweeps.models import Plan

    return Plan.objects.create(
        team=team, name="smoke", levels=[1, 4], warmup_s=0.5, duration_s=2, tokens=32, dimensions=64, timeout_s=5
    )


@pytest.fixture
def tokenizer_file(tmp_path):
    """A small WordPiece tokenizer saved as a tokenizer.json (tests/test_engine_tokens.py `wordpiece`)."""
    from tests.test_engine_tokens import wordpiece

    path = tmp_path / "tokenizer.json"
    wordpiece().save(str(path))
    return str(path)

