"""Production defaults: DEBUG off unless asked for, no 500 (and no settings) for a bad body, HTTPS
settings from the environment with a warning-free `check --deploy`, private var/ and database."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from portal.accounts.models import Membership
from tests.api_support import token_client

ROOT = Path(__file__).resolve().parent.parent
DEEP = "[" * 5000 + "]" * 5000

pytestmark = pytest.mark.usefixtures("fresh_throttles")


def _env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEBUG", "SECURE_", "SESSION_COOKIE", "CSRF_"))}
    env.pop("DATABASE_URL", None)
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # set by the browser tests in this process, never in production
    env.update({"EMBPERF_VAR_DIR": str(tmp_path / "var"), "DJANGO_SETTINGS_MODULE": "portal.settings", **extra})
    return env


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_debug_is_off_unless_asked_for(tmp_path):
    code = "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)"
    assert _python(code, _env(tmp_path)).stdout.strip() == "False"
    assert _python(code, _env(tmp_path, DEBUG="true")).stdout.strip() == "True"


@pytest.fixture
def viewer(team):
    from django.contrib.auth.models import User

    user = User.objects.create_user("vera", password="password")
    Membership.objects.create(team=team, user=user, role="viewer")
    return user


@pytest.mark.parametrize(("path", "role"), [("/api/v1/plans/", "viewer"), ("/api/v1/targets/", "viewer"),
                                           ("/api/v1/runs/", "viewer"), ("/api/v1/ingest/", "owner")])
def test_too_deep_json_is_400_naming_the_body_even_for_a_viewer(request, path, role):
    # (ingest asks a viewer for a writable team first; an owner reaches the body)
    api = token_client(request.getfixturevalue(role))
    response = api.generic("POST", path, DEEP, content_type="application/json")
    assert response.status_code == 400
    body = response.json()
    assert body == {"body": ["The JSON in the request body is nested deeper than 64 levels."]}
    assert "DATABASE_URL" not in response.content.decode()


def test_nesting_below_the_decoders_limit_is_refused_too(owner):
    # 200 levels decode fine but would make every recursive reader after the parser work for it.
    api = token_client(owner)
    response = api.generic("POST", "/api/v1/ingest/", "[" * 200 + "]" * 200, content_type="application/json")
    assert response.status_code == 400 and "body" in response.json()


def test_404_page_lists_no_url_patterns(client, owner):
    client.force_login(owner)
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    text = response.content.decode()
    assert "api/v1" not in text and "URLconf" not in text


def test_check_deploy_passes_with_the_documented_production_environment(tmp_path):
    production = {}
    for line in (ROOT / "docs" / "production.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split("=", 1)
            production[key] = value
    env = _env(tmp_path, SECRET_KEY="k" * 10 + "-generated-for-this-check-0123456789abcdefghijklmnop")
    check = [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
    done = subprocess.run(check, cwd=ROOT, env={**env, **production}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # Without the documented settings the same check fails: it does look at them.
    done = subprocess.run(check, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "SECURE_HSTS_SECONDS" in done.stdout + done.stderr


def test_a_bad_proxy_header_setting_names_the_variable(tmp_path):
    done = _python("import django; django.setup()", _env(tmp_path, SECURE_PROXY_SSL_HEADER="https"))
    assert done.returncode != 0 and "SECURE_PROXY_SSL_HEADER='https' is not a header and a value" in done.stderr


def test_var_folder_and_database_file_are_private(tmp_path):
    env = _env(tmp_path)
    done = subprocess.run(["bash", "-c", f"umask 022 && exec {sys.executable} manage.py migrate --noinput -v0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    var = tmp_path / "var"
    assert stat.S_IMODE(var.stat().st_mode) == 0o700
    for name in ("embperf.sqlite3", "secret_key"):
        assert stat.S_IMODE((var / name).stat().st_mode) == 0o600, name


def test_make_run_serves_through_gunicorn_on_loopback():
    web = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    assert "gunicorn portal.wsgi" in web and "${HOST:-127.0.0.1}" in web and "runserver" not in web


def test_the_tests_never_use_the_checkouts_data_folder(settings):
    # tests/isolated_var.py runs before Django reads its settings; a conftest.py would be too late.
    assert settings.VAR_DIR != settings.BASE_DIR / "var"
    assert "embperf-test-var-" in settings.VAR_DIR.name
