"""Real processes for the end-to-end tests: a Celery worker, a web server, a database, a broker, and a driver.

The worker is another process, so the test cannot use pytest-django's test database. Each stack
gets its own database (a SQLite file in a temporary var dir, or a uniquely named PostgreSQL
database) and its own queue name, is migrated by `manage.py migrate`, and is driven through a
long-lived "driver" subprocess that runs Django against that database and answers JSON commands
on stdin/stdout (create data, start and cancel runs through portal.sweeps.services, read runs,
render the run page with Django's test client). The test process itself only runs the simulator.

`python -m tests.e2e_support serve` is the driver's entry point.
"""
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CELERY = str(Path(PYTHON).parent / "celery")
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def base_env(var_dir: Path, *, database_url: str, broker_url: str, extra: dict | None = None) -> dict:
    env = {key: value for key, value in os.environ.items()
           if key not in ("DATABASE_URL", "CELERY_BROKER_URL", "EMBPERF_VAR_DIR")}
    env.update({
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "EMBPERF_VAR_DIR": str(var_dir),
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
        # A run waiting for its target looks again often, so a test sees many looks in a few seconds.
        "EMBPERF_TARGET_WAIT_S": "0.3",
    })
    env.update(extra or {})
    return env


def migrate(env: dict) -> None:
    done = subprocess.run([PYTHON, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{done.stdout}\n{done.stderr}")


def postgres_available() -> str | None:
    """None when PostgreSQL answers at 127.0.0.1:5432, else why not."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as exc:
        return f"PostgreSQL at 127.0.0.1:5432 is not reachable ({exc})"


def redis_available() -> str | None:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
        return None
    except Exception as exc:
        return f"Redis at 127.0.0.1:6379 is not reachable ({exc})"


def create_postgres_database(name: str) -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgres://postgres@127.0.0.1:5432/{name}"


def drop_postgres_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def terminate_backends(db_name: str, *, keep_pid: int | None = None) -> int:
    """pg_terminate_backend on every connection to `db_name` (this test's own database) but `keep_pid`."""
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
            " AND pid IS DISTINCT FROM %s", (db_name, keep_pid)).fetchall()
    return sum(1 for (done,) in rows if done)


class RedisServer:
    """A redis-server of the test's own on its own port (never the shared one), restartable."""

    def __init__(self, port: int, log_path: Path):
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._log = open(log_path, "ab")  # closed in stop()
        self.proc = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=self._log, stderr=subprocess.STDOUT)
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=1).ping()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()
        self._log.close()


PG_BIN = Path("/usr/lib/postgresql/15/bin")


def own_postgres_problem() -> str | None:
    """None when this machine can run a PostgreSQL of the test's own (initdb, as the postgres user)."""
    if not (PG_BIN / "initdb").exists():
        return f"{PG_BIN / 'initdb'} is not installed"
    if os.geteuid() == 0 and not Path("/usr/sbin/runuser").exists():
        return "runuser is missing (PostgreSQL refuses to run as root)"
    return None


class PostgresServer:
    """A PostgreSQL of the test's own (initdb in a temporary folder, its own port), stoppable and restartable:
    the machine's shared server is never touched."""

    def __init__(self, port: int):
        import tempfile

        self.port = port
        # Its own folder under the system's temporary one: a test's tmp_path is private to root.
        folder = self.folder = Path(tempfile.mkdtemp(prefix="embperf-pg-"))
        folder.chmod(0o755)
        self.data = folder / "pgdata"
        self.url = f"postgres://postgres@127.0.0.1:{port}/embperf"
        if os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam("postgres")
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        self._pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "embperf",
                 binary=Path("/usr/bin/createdb") if not (PG_BIN / "createdb").exists() else PG_BIN / "createdb")

    def _pg(self, tool: str, *args: str, binary: Path | None = None) -> None:
        command = [str(binary or PG_BIN / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd="/")
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "postgres.log"), "-w", "-t", "60", "-o",
                 f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        """Stop at once (`-m immediate`: connections are cut as in a crash)."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def log(self) -> str:
        path = self.folder / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def rabbitmq_problem() -> str | None:
    """None when this machine can start a RabbitMQ of the test's own (a second node beside any shared one)."""
    if not shutil.which("rabbitmq-server") or not shutil.which("rabbitmqctl"):
        return "rabbitmq-server is not installed"
    return None


class RabbitMQServer:
    """A RabbitMQ node of the test's own: its own node name, AMQP and distribution ports, folders and
    configuration (e.g. a short consumer_timeout), no plugins. The machine's shared node is never touched."""

    def __init__(self, port: int, *, config: dict[str, str]):
        import tempfile

        self.port = port
        self.node = f"{unique_name('embperf')}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{port}//"
        self.folder = Path(tempfile.mkdtemp(prefix="embperf-rabbit-"))
        (self.folder / "enabled_plugins").write_text("[].\n")
        lines = {"listeners.tcp.default": f"127.0.0.1:{port}", "loopback_users": "none", **config}
        (self.folder / "rabbitmq.conf").write_text("".join(f"{key} = {value}\n" for key, value in lines.items()))
        self.folder.chmod(0o777)
        if os.geteuid() == 0:
            with contextlib.suppress(KeyError):
                import pwd

                entry = pwd.getpwnam("rabbitmq")
                for path in (self.folder, *self.folder.iterdir()):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
        self.env = {**os.environ, "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_PORT": str(port),
                    "RABBITMQ_DIST_PORT": str(port + 20000), "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
                    "RABBITMQ_LOG_BASE": str(self.folder / "log"),
                    "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
                    "RABBITMQ_FEATURE_FLAGS_FILE": str(self.folder / "feature_flags"),
                    "RABBITMQ_PID_FILE": str(self.folder / "pid")}
        self._log = open(self.folder / "server.out", "wb")  # closed in stop()
        self.proc = subprocess.Popen(["rabbitmq-server"], env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.folder)
        import socket

        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"rabbitmq-server did not start on port {port}") from None
                time.sleep(0.5)

    def log(self) -> str:
        return (self.folder / "server.out").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            subprocess.run(["rabbitmqctl", "-n", self.node, "stop"], env=self.env, capture_output=True, timeout=60)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def drop_redis_queue(queue: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.delete(queue, f"_kombu.binding.{queue}")


class _ProcessGroup:
    """A command in its own process group, its output in a log file; stop() ends the whole group."""

    def __init__(self, command: list[str], env: dict, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


class Worker(_ProcessGroup):
    """`celery -A workers worker` consuming one queue, in its own process group."""

    def __init__(self, env: dict, queue: str, log_path: Path):
        self.node = f"{unique_name('e2e')}@%h"
        super().__init__(
            [CELERY, "-A", "workers", "worker", "-Q", queue, "-c", "2", "-n", self.node, "--without-gossip",
             "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"], env, log_path)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Celery worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"the Celery worker was not ready within {timeout} s:\n{self.log()[-4000:]}")


class WebServer(_ProcessGroup):
    """gunicorn on 127.0.0.1, port 0; the port is read from its log."""

    def __init__(self, env: dict, log_path: Path, workers: int = 1, access_format: str | None = None):
        gunicorn = str(Path(PYTHON).parent / "gunicorn")
        extra = ["--access-logformat", access_format] if access_format else []
        super().__init__([gunicorn, "-b", "127.0.0.1:0", "-w", str(workers), "--threads", "8", "--access-logfile",
                          "-", *extra, "portal.wsgi"], env, log_path)

    def wait_url(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            match = re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", text)
            if match and "Booting worker" in text:
                return match.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{text[-4000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not start within {timeout} s")


class Driver:
    """A Django process on the stack's database that answers one JSON command per line."""

    def __init__(self, env: dict, log_path: Path):
        self._log = open(log_path, "wb")  # closed in stop()
        self.log_path = log_path
        self.proc = subprocess.Popen([PYTHON, "-m", "tests.e2e_support", "serve"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)

    def call(self, command: str, **args) -> dict:
        self.proc.stdin.write(json.dumps({"command": command, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the driver died:\n{self.log_path.read_text(errors='replace')[-4000:]}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"driver command {command} failed: {answer['error']}")
        return answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


# The driver side (runs in the subprocess, with Django set up on the stack's database).

def _serve() -> None:
    import traceback

    import django

    django.setup()
    from django.db import connections
    from django.db.utils import InterfaceError, OperationalError

    state: dict = {}
    for line in sys.stdin:
        request = json.loads(line)
        command = COMMANDS[request.pop("command")]
        try:
            try:
                answer = command(state, **request)
            except (OperationalError, InterfaceError):
                # The test restarted the stack's database: a fresh connection, then one more try.
                connections.close_all()
                answer = command(state, **request)
        except Exception:
            answer = {"error": traceback.format_exc()}
        sys.stdout.write(json.dumps(answer, default=str) + "\n")
        sys.stdout.flush()


def _setup(state: dict, *, sim_url: str, queue: str) -> dict:
    from django.contrib.auth.models import User

    from portal.accounts.models import Membership, Team
    from portal.sweeps.models import Plan, QueueGrant, Target

    user = User.objects.create_user("e2e", password=uuid.uuid4().hex)
    team = Team.objects.create(name="E2E")
    Membership.objects.create(team=team, user=user, role=Membership.Role.OWNER)
    QueueGrant.objects.create(team=team, queue=queue)  # the operator lends the team this worker's queue
    target = Target.objects.create(team=team, name="simulator", base_urls=[sim_url], model_name="sim-embed",
                                   engine="simulator", queue=queue)
    short = Plan.objects.create(team=team, name="short", levels=[1, 2], warmup_s=0.5, duration_s=1, tokens=64,
                                dimensions=128, timeout_s=5)
    long = Plan.objects.create(team=team, name="long", levels=[1, 2], warmup_s=0, duration_s=60, tokens=64,
                               dimensions=128, timeout_s=5)
    # Three short levels: long enough to act in the middle of one, short enough for a quick test.
    steps = Plan.objects.create(team=team, name="steps", levels=[1, 2, 4], warmup_s=0.3, duration_s=4, tokens=64,
                                dimensions=128, timeout_s=5)
    state["user"] = user
    return {"target": target.pk, "short": short.pk, "long": long.pk, "steps": steps.pk}


def _start(state: dict, *, target: int, plan: int, label: str, server_config: dict | None = None) -> dict:
    from portal.sweeps.models import Plan, Target
    from portal.sweeps.services import start_run

    run = start_run(target=Target.objects.get(pk=target), plan=Plan.objects.get(pk=plan), user=state["user"],
                    label=label, server_config=server_config)
    return {"run": run.pk, "status": run.status}


def _history(state: dict, *, target: int, plan: int) -> dict:
    """What the history page and the dashboard make of a target and plan: flagged runs with their
    reasons, the segments (run ids, what changed) and both pages' HTML."""
    from django.test import Client
    from django.urls import reverse

    from portal.history.timeline import build_history, dashboard_regressions
    from portal.sweeps.models import Run

    runs = Run.objects.filter(target_id=target, plan_id=plan)
    hist = build_history(runs)
    client = Client()
    client.force_login(state["user"])
    history_page = client.get(reverse("history") + f"?target={target}&plan={plan}").content.decode()
    return {"flagged": {str(p.id): p.regressions for p in hist.regressions},
            "dashboard": [p.id for p in dashboard_regressions(Run.objects.all())],
            "segments": [{"runs": [p.id for p in seg.points], "changes": seg.changes} for seg in hist.segments],
            "history_html": history_page, "dashboard_html": client.get(reverse("dashboard")).content.decode()}


def _run(state: dict, *, run: int) -> dict:
    from portal.sweeps.models import Run

    row = Run.objects.get(pk=run)
    levels = [
        {"index": level.index, "concurrency": level.concurrency, "qps": level.qps,
         "requests_ok": level.requests_ok, "error_rate": level.error_rate, "p99": level.latency_p99_ms,
         "status": level.data.get("status")}
        for level in row.levels.order_by("index")
    ]
    return {"status": row.status, "reason": row.status_reason, "phase": (row.progress or {}).get("phase"),
            "recent": len((row.progress or {}).get("recent") or []), "finished": row.finished, "started": row.started,
            "worker_host": row.worker_host, "levels": levels, "summary": row.summary, "heartbeat": row.heartbeat,
            "level_index": (row.progress or {}).get("level_index")}


def _backend_pid(state: dict) -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return {"pid": cursor.fetchone()[0]}


def _press_cancel(state: dict, *, run: int) -> dict:
    """The run page's Cancel button: POST, follow the redirect, return the page it lands on."""
    from django.test import Client
    from django.urls import reverse

    client = Client()
    client.force_login(state["user"])
    response = client.post(reverse("run-cancel", args=[run]), follow=True)
    return {"status": response.status_code, "html": response.content.decode()}


def _progress(state: dict, *, run: int) -> dict:
    from django.test import Client
    from django.urls import reverse

    client = Client()
    client.force_login(state["user"])
    return client.get(reverse("run-progress", args=[run]) + "?levels=0").json()


def _cancel(state: dict, *, run: int) -> dict:
    from django.utils import timezone

    from portal.sweeps.models import Run
    from portal.sweeps.services import request_cancel

    row = request_cancel(Run.objects.get(pk=run))
    return {"at": timezone.now(), "status": row.status}


def _page(state: dict, *, run: int) -> dict:
    from django.test import Client
    from django.urls import reverse

    client = Client()
    client.force_login(state["user"])
    response = client.get(reverse("run-detail", args=[run]))
    return {"status": response.status_code, "html": response.content.decode()}


def _plan(state: dict, **fields) -> dict:
    from portal.accounts.models import Team
    from portal.sweeps.models import Plan

    team = Team.objects.get(memberships__user=state["user"])
    return {"plan": Plan.objects.create(team=team, **fields).pk}


def _api(state: dict, *, method: str, path: str, body: dict | None = None) -> dict:
    """One API request as the stack's user; answers its status and JSON body."""
    from django.test import Client

    client = Client()
    client.force_login(state["user"])
    response = getattr(client, method.lower())(path, body or {}, content_type="application/json")
    return {"status": response.status_code, "json": response.json()}


def _target(state: dict, **fields) -> dict:
    """A target of the stack's team (any Target fields: base_urls, queue, tokenizer, ...)."""
    from portal.accounts.models import Team
    from portal.sweeps.models import Target

    team = Team.objects.get(memberships__user=state["user"])
    fields.setdefault("model_name", "m")
    return {"target": Target.objects.create(team=team, **fields).pk}


def _grant(state: dict, *, queue: str, granted: bool) -> dict:
    """Grant the stack's team a queue, or withdraw the grant (what an administrator does in the admin)."""
    from portal.accounts.models import Team
    from portal.sweeps.models import QueueGrant

    team = Team.objects.get(memberships__user=state["user"])
    if granted:
        QueueGrant.objects.get_or_create(team=team, queue=queue)
    else:
        QueueGrant.objects.filter(team=team, queue=queue).delete()
    return {"granted": QueueGrant.objects.filter(team=team, queue=queue).exists()}


def _broker_refused_run(state: dict, *, target: int, plan: int) -> dict:
    """A run the broker refused at its start (failed, never started), as enqueue_run leaves it."""
    from portal.sweeps.models import Plan, Run, Target
    from portal.sweeps.services import create_run

    run = create_run(target=Target.objects.get(pk=target), plan=Plan.objects.get(pk=plan), user=state["user"])
    Run.objects.filter(pk=run.pk).update(status=Run.Status.FAILED, status_reason="the broker did not answer",
                                         finished=run.created)
    return {"run": run.pk}


def _post_page(state: dict, *, name: str, args: list | None = None, data: dict | None = None) -> dict:
    """A page's form POST (the URL by its name) as the stack's user, redirects followed: the status,
    the path it lands on and the page."""
    from django.test import Client
    from django.urls import reverse

    client = Client()
    client.force_login(state["user"])
    response = client.post(reverse(name, args=args or []), data or {}, follow=True)
    return {"status": response.status_code, "path": response.wsgi_request.path, "html": response.content.decode()}


def _password(state: dict, *, password: str) -> dict:
    """Give the stack's user a password (to sign in over HTTP); answers the user name."""
    state["user"].set_password(password)
    state["user"].save(update_fields=["password"])
    return {"username": state["user"].username}


def _runs(state: dict) -> dict:
    from portal.sweeps.models import Run

    return {"runs": list(Run.objects.order_by("pk").values_list("pk", flat=True))}


def _token(state: dict, *, teams: list | None = None) -> dict:
    """A new API token of the stack's user, limited to `teams` (ids) when given."""
    from portal.accounts.models import ApiToken, Team

    chosen = list(Team.objects.filter(pk__in=teams)) if teams else None
    return {"token": ApiToken.issue(state["user"], "e2e", teams=chosen)[1]}


def _team(state: dict, *, name: str, target: str) -> dict:
    """Another team of the stack's user (as its owner), with one target named `target`."""
    from portal.accounts.models import Membership, Team
    from portal.sweeps.models import Target

    team = Team.objects.create(name=name)
    Membership.objects.create(team=team, user=state["user"], role=Membership.Role.OWNER)
    row = Target.objects.create(team=team, name=target, base_urls=["http://127.0.0.1:1/v1"], model_name="m")
    return {"team": team.pk, "target": row.pk}


def _delete_team(state: dict, *, team: int) -> dict:
    """Delete a team as the admin's bulk delete does (a queryset delete, its rows with it)."""
    from portal.accounts.models import Team

    Team.objects.filter(pk=team).delete()
    return {"deleted": not Team.objects.filter(pk=team).exists()}


def _api_token(state: dict, *, method: str, path: str, token: str, body: dict | None = None) -> dict:
    """One API request with a bearer token, answered as a client would see it (a server error included)."""
    from django.test import Client

    client = Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Bearer {token}")
    response = getattr(client, method.lower())(path, body or {}, content_type="application/json")
    return {"status": response.status_code, "content_type": response.get("Content-Type", ""),
            "text": response.content.decode(errors="replace")[:2000]}


def _checkpoint(state: dict) -> dict:
    """SQLite: copy the write-ahead log into the database file and truncate it (so new writes need new space)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {"result": list(cursor.fetchone())}


def _document(state: dict, *, run: int) -> dict:
    """The run's result document as the export gives it, and the columns a fault test checks."""
    from portal.sweeps.models import Run

    row = Run.objects.get(pk=run)
    return {"document": row.to_document(), "resent_at": row.resent_at, "progress": row.progress,
            "client_version": row.client_version}


COMMANDS = {"setup": _setup, "target": _target, "grant": _grant, "broker_refused_run": _broker_refused_run,
            "document": _document, "token": _token, "team": _team, "delete_team": _delete_team,
            "api_token": _api_token, "checkpoint": _checkpoint,
            "post_page": _post_page, "runs": _runs, "password": _password, "start": _start, "run": _run,
            "cancel": _cancel, "page": _page, "history": _history, "plan": _plan, "api": _api,
            "backend_pid": _backend_pid,
            "press_cancel": _press_cancel, "progress": _progress}

if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    _serve()


@contextmanager
def worker_stack(env: dict, queue: str, log_dir: Path, sim_url: str) -> Iterator[dict]:
    """A migrated database, a worker on `queue` and a driver with the set-up data (the simulator as a
    target, short plans); yields {"driver", "worker", "ids"} and stops both processes afterwards."""
    worker = driver = None
    try:
        migrate(env)
        worker = Worker(env, queue, log_dir / "worker.log")
        driver = Driver(env, log_dir / "driver.log")
        ids = driver.call("setup", sim_url=sim_url, queue=queue)
        worker.wait_ready()
        yield {"driver": driver, "worker": worker, "ids": ids}
    finally:
        for part in (driver, worker):
            if part is not None:
                part.stop()


@contextmanager
def embedded_stack(name: str, tmp_path_factory, sim_url: str) -> Iterator[dict]:
    """worker_stack on the embedded default (SQLite, the file-system broker) in a folder of its own,
    on a queue named after `name`."""
    var_dir = tmp_path_factory.mktemp(name.replace("_", "-"))
    env = base_env(var_dir, database_url=f"sqlite:///{var_dir / 'e2e.sqlite3'}", broker_url="filesystem://")
    with worker_stack(env, unique_name(name), var_dir, sim_url) as parts:
        yield parts


def ended(state: dict) -> bool:
    """Whether a run (the driver's "run" answer) has left the queue and finished."""
    return state["status"] not in ("queued", "running")


def wait_for(driver, run_id: int, predicate, *, timeout: float, worker=None) -> dict:
    """The run's state (the driver's "run" answer) once `predicate` holds; fails after `timeout` s with
    the state and the end of the worker's log."""
    deadline = time.monotonic() + timeout
    state = driver.call("run", run=run_id)
    while not predicate(state):
        if time.monotonic() > deadline:
            log = worker.log()[-3000:] if worker is not None else ""
            raise AssertionError(f"run {run_id} did not get there within {timeout} s: {state}\n{log}")
        time.sleep(0.1)
        state = driver.call("run", run=run_id)
    return state
