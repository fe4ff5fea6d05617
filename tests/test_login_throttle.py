"""Sign-in throttling (django-axes): per user name and per address, for the lockout period only."""
from datetime import timedelta

from django.urls import reverse
from django.utils import timezone

LOGIN = "/accounts/login/"


def _fail(client, username, times, **extra):
    for _ in range(times):
        client.post(LOGIN, {"username": username, "password": "wrong"}, **extra)


def _sign_in(client, username, **extra):
    return client.post(LOGIN, {"username": username, "password": "password"}, **extra)


def test_login_url_is_the_throttled_one():
    assert reverse("login") == LOGIN


def test_wrong_passwords_lock_the_user_name_from_every_address(client, owner, settings):
    _fail(client, "alice", settings.AXES_FAILURE_LIMIT, REMOTE_ADDR="10.0.0.1")
    response = _sign_in(client, "alice", REMOTE_ADDR="10.0.0.99")
    assert response.status_code == 429 and "_auth_user_id" not in client.session


def test_wrong_passwords_lock_the_address_for_every_user_name(client, owner, member, settings):
    for n in range(settings.AXES_FAILURE_LIMIT):
        client.post(LOGIN, {"username": f"guess{n}", "password": "wrong"}, REMOTE_ADDR="10.0.0.1")
    assert _sign_in(client, "bob", REMOTE_ADDR="10.0.0.1").status_code == 429
    # Another address is not locked, and bob's name was never guessed.
    assert _sign_in(client, "bob", REMOTE_ADDR="10.0.0.2").status_code == 302


def test_a_forged_forwarded_for_header_does_not_dodge_the_address_lock(client, owner, settings):
    for n in range(settings.AXES_FAILURE_LIMIT):
        client.post(LOGIN, {"username": f"guess{n}", "password": "wrong"}, REMOTE_ADDR="10.0.0.1",
                    HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")
    assert _sign_in(client, "alice", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="192.0.2.200").status_code == 429


def test_the_lock_ends_after_the_lockout_period(client, owner, settings):
    from axes.models import AccessAttempt

    _fail(client, "alice", settings.AXES_FAILURE_LIMIT)
    assert _sign_in(client, "alice").status_code == 429
    AccessAttempt.objects.update(attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))
    assert _sign_in(client, "alice").status_code == 302


def test_fewer_failures_than_the_limit_do_not_lock(client, owner, settings):
    _fail(client, "alice", settings.AXES_FAILURE_LIMIT - 1)
    assert _sign_in(client, "alice").status_code == 302
