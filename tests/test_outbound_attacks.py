"""Using the portal's worker against the network it sits in, tried as a team member would.

Every server here is a real local socket the test starts; what it did and did not receive is
asserted. The worker's tasks run in-process (Celery's eager apply), so their logs are captured too.
Attacks: reading a non-HTTP service's banner through the probe or a run, reaching the cloud
metadata address or a name that resolves to a refused address, a metrics URL that redirects,
the portal's own database and broker, and moving a target with a stored key to another server.
"""
import json
import socket
import threading
import time

import pytest
from django.test import override_settings
from django.urls import reverse

from portal.sweeps.models import Plan, Run, Target
from portal.sweeps.services import create_run
from tests.api_support import token_client
from workers.tasks import probe_target, run_sweep

BODY = b'{"data": [{"embedding": [0.5, 0.25], "index": 0}], "model": "m"}'
HTTP_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "
               + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)

# What real services send to a client that speaks HTTP to them; MARKERS must never be shown anywhere.
BANNERS = {
    "mariadb": (True, b"\x5b\x00\x00\x00\x0a5.5.5-10.6.12-MariaDB-SECRETVERSION\x00\x2d\x00\x00\x00"
                      b"SALTsalt\x00\xfe\xff-\x02\x00\xff\x81\x15"),
    "nats": (True, b'INFO {"server_id":"NSECRETNATS","version":"2.10.4","host":"0.0.0.0","port":4222}\r\n'),
    "amqp": (False, b"AMQP\x00\x00\x09\x01"),
    "redis": (False, b"-ERR unknown command 'POST', with args beginning with: 'SECRETREDIS'\r\n"),
}
MARKERS = ("SECRETVERSION", "MariaDB", "SALTsalt", "NSECRETNATS", "server_id", "AMQP", "SECRETREDIS", "-ERR")


class Peer:
    """A TCP server on 127.0.0.1: the first `http_first` connections get one embedding answer over
    HTTP, later ones the banner (sent on connect when `greets`, else after the request arrives).
    Records how many connections it accepted and every byte it received."""

    def __init__(self, banner: bytes = b"", greets: bool = True, http_first: int = 0, answer: bytes | None = None):
        self.banner, self.greets, self.http_first, self.answer = banner, greets, http_first, answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted = 0
        self.received = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._one, args=(conn, self.accepted), daemon=True).start()

    def _one(self, conn, number):
        with conn:
            conn.settimeout(3)
            try:
                as_http = number <= self.http_first or self.answer is not None
                if self.greets and not as_http:
                    conn.sendall(self.banner)
                self.received += conn.recv(65536)
                if as_http:
                    conn.sendall(self.answer if self.answer is not None else HTTP_ANSWER)
                elif not self.greets:
                    conn.sendall(self.banner)
                time.sleep(0.05)
            except OSError:
                pass

    def close(self):
        self.sock.close()


@pytest.fixture
def peers():
    started = []

    def start(*args, **kwargs):
        peer = Peer(*args, **kwargs)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.close()


@pytest.fixture
def plan(team):
    return Plan.objects.create(team=team, name="tiny", levels=[1], warmup_s=0, duration_s=0.5, tokens=8,
                               dimensions=2, timeout_s=2, abort_error_rate=1.0)


def everything_shown(client, api, target, run) -> str:
    """Every page, API answer, stored document and export a user can see of this target and run."""
    parts = [
        client.get(target.get_absolute_url()).content.decode(),
        json.dumps(client.get(reverse("target-probe", args=[target.pk])).json()),
        client.get(run.get_absolute_url()).content.decode(),
        json.dumps(client.get(reverse("run-progress", args=[run.pk])).json()),
        api.get(f"/api/v1/targets/{target.pk}/").content.decode(),
        api.get(f"/api/v1/runs/{run.pk}/").content.decode(),
    ]
    for fmt in ("json", "csv", "md"):
        parts.append(api.get(f"/api/v1/runs/{run.pk}/export/?format={fmt}").content.decode())
    run.refresh_from_db()
    target.refresh_from_db()
    parts += [json.dumps(target.last_probe), run.status_reason, json.dumps(run.document),
              json.dumps([level.data for level in run.levels.all()])]
    return "\n".join(parts)


@pytest.mark.parametrize("service", sorted(BANNERS))
def test_a_services_banner_never_appears_anywhere(transactional_db, service, peers, owner, team, plan, client,
                                                  caplog, capfd):
    greets, banner = BANNERS[service]
    # The probe meets the service; the run's probe gets one HTTP answer, then its load meets the service.
    peer = peers(banner, greets=greets)
    target = Target.objects.create(team=team, name=service, base_urls=[peer.url + "/v1"], model_name="m")
    probe_target.apply(args=[target.pk])
    target.refresh_from_db()
    assert target.last_probe["ok"] is False and "not an HTTP server" in target.last_probe["error"]

    loaded = peers(banner, greets=greets, http_first=1)
    Target.objects.filter(pk=target.pk).update(base_urls=[loaded.url + "/v1"])
    target.refresh_from_db()
    run = create_run(target=target, plan=plan)
    run_sweep.apply(args=[run.pk])
    run.refresh_from_db()
    assert loaded.accepted > 1, "the load reached the service"
    examples = " ".join(json.dumps(level.data.get("error_examples")) for level in run.levels.all())
    assert "not an HTTP server" in examples or "not an HTTP server" in run.status_reason

    client.force_login(owner)
    shown = everything_shown(client, token_client(owner), target, run)
    logged = caplog.text + "".join(capfd.readouterr())
    for marker in MARKERS:
        assert marker not in shown, marker
        assert marker not in logged, marker


def connects_during(monkeypatch) -> list:
    """Every address a socket connects to from now on (asyncio's default loop calls sock.connect)."""
    seen = []
    real = socket.socket.connect

    def spy(self, address):
        seen.append(address[0])
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", spy)
    return seen


def test_probe_and_run_to_the_metadata_address_send_nothing(transactional_db, team, plan, monkeypatch):
    # Saved before the policy existed (the form refuses it now): the worker refuses it again.
    target = Target.objects.create(team=team, name="meta", base_urls=["http://169.254.169.254/v1"], model_name="m")
    connected = connects_during(monkeypatch)
    probe_target.apply(args=[target.pk])
    run = create_run(target=target, plan=plan)
    assert run_sweep.apply(args=[run.pk]).get() == Run.Status.FAILED
    target.refresh_from_db()
    run.refresh_from_db()
    assert "not contacted" in target.last_probe["error"] and "link-local" in target.last_probe["error"]
    assert "link-local" in run.status_reason
    assert not any(address.startswith("169.254.") for address in connected)


def test_a_name_resolving_to_a_refused_address_sends_nothing(transactional_db, team, plan, peers, monkeypatch):
    peer = peers(answer=HTTP_ANSWER)
    real = socket.getaddrinfo

    def hosts(host, port, *args, **kwargs):  # a hosts-style mapping: inside.test is the peer's address
        if host == "inside.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hosts)
    target = Target.objects.create(team=team, name="inside", base_urls=[f"http://inside.test:{peer.port}/v1"],
                                   model_name="m", metrics_urls=[f"http://inside.test:{peer.port}/metrics"])
    with override_settings(EMBPERF_ALLOWED_TARGETS="10.0.0.0/8"):
        probe_target.apply(args=[target.pk])
        run = create_run(target=target, plan=plan)
        assert run_sweep.apply(args=[run.pk]).get() == Run.Status.FAILED
    target.refresh_from_db()
    run.refresh_from_db()
    assert "inside.test (127.0.0.1)" in target.last_probe["error"]
    assert "not among the allowed targets" in run.status_reason
    assert peer.accepted == 0


def test_a_metrics_url_that_redirects_is_not_followed(transactional_db, team, plan, peers):
    inside = peers(answer=HTTP_ANSWER)  # where the redirect points: it must see nothing
    redirect = (b"HTTP/1.1 302 Found\r\nLocation: " + inside.url.encode() + b"/metrics\r\n"
                b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    metrics = peers(answer=redirect)
    server = peers(answer=HTTP_ANSWER)
    target = Target.objects.create(team=team, name="t", base_urls=[server.url + "/v1"], model_name="m",
                                   metrics_urls=[metrics.url + "/metrics"])
    plan.duration_s = 2.5  # scrapes come once a second: a few of them fall inside the level
    plan.save()
    run = create_run(target=target, plan=plan)
    run_sweep.apply(args=[run.pk])
    run.refresh_from_db()
    assert metrics.accepted >= 1
    assert inside.accepted == 0
    notes = json.dumps(run.document.get("telemetry_notes")) + json.dumps([lv.data for lv in run.levels.all()])
    assert "redirects, and embperf follows no redirects" in notes


def test_the_portals_own_broker_is_refused_at_save_and_at_connect(transactional_db, owner, team, plan, peers,
                                                                   client):
    broker = peers(answer=HTTP_ANSWER)
    with override_settings(CELERY_BROKER_URL=f"redis://localhost:{broker.port}/0"):
        client.force_login(owner)
        response = client.post(reverse("target-create"), {
            "name": "sneaky", "flavor": "openai", "base_urls": f"http://127.0.0.1:{broker.port}/v1",
            "model_name": "m", "engine": "other", "gpu_source": "none", "queue": "sweeps"})
        assert "is this portal&#x27;s own task broker" in response.content.decode()
        api = token_client(owner)
        answer = api.post("/api/v1/targets/", {"name": "sneaky", "base_urls": [f"http://[::1]:{broker.port}"],
                                               "model_name": "m"}, format="json")
        assert answer.status_code == 400 and "own task broker" in answer.json()["base_urls"][0]
        target = Target.objects.create(team=team, name="old", base_urls=[f"http://127.0.0.1:{broker.port}/v1"],
                                       model_name="m")
        probe_target.apply(args=[target.pk])
        run = create_run(target=target, plan=plan)
        assert run_sweep.apply(args=[run.pk]).get() == Run.Status.FAILED
    target.refresh_from_db()
    assert "own task broker" in target.last_probe["error"]
    assert not Target.objects.filter(name="sneaky").exists()
    assert broker.accepted == 0


class EveryAddressPeer(Peer):
    """A Peer listening on every address of this host (IPv6 and IPv4), as a service bound to all is."""

    def __init__(self, **kwargs):
        self.sock = socket.socket(socket.AF_INET6)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.bind(("::", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.banner, self.greets, self.http_first, self.answer = b"", True, 0, kwargs.get("answer")
        self.accepted = 0
        self.received = b""
        threading.Thread(target=self._serve, daemon=True).start()


def _hosted(address) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


def test_the_portals_own_broker_is_refused_on_every_address_of_this_host(transactional_db, owner, team, plan,
                                                                          client):
    from benchmarks.outbound import host_addresses

    own = sorted((a for a in host_addresses() if not a.is_loopback and not a.is_link_local), key=str)
    if not own:
        pytest.skip("this host has no address besides loopback")
    broker = EveryAddressPeer(answer=HTTP_ANSWER)
    try:
        # The broker is configured on loopback; "*" allows every address, so only the rule for the
        # portal's own services stands between a target and the broker.
        with override_settings(CELERY_BROKER_URL=f"redis://127.0.0.1:{broker.port}/0", EMBPERF_ALLOWED_TARGETS="*"):
            client.force_login(owner)
            api = token_client(owner)
            for address in own:
                url = f"http://{_hosted(address)}:{broker.port}/v1"
                response = client.post(reverse("target-create"), {
                    "name": "sneaky", "flavor": "openai", "base_urls": url, "model_name": "m", "engine": "other",
                    "gpu_source": "none", "queue": "sweeps"})
                assert "is this portal&#x27;s own task broker" in response.content.decode(), url
                answer = api.post("/api/v1/targets/", {"name": "sneaky", "base_urls": [url], "model_name": "m"},
                                  format="json")
                assert answer.status_code == 400 and "own task broker" in answer.json()["base_urls"][0], url
                # Saved before the rule: the worker refuses at connect time.
                target = Target.objects.create(team=team, name=f"old {address}", base_urls=[url], model_name="m")
                probe_target.apply(args=[target.pk])
                target.refresh_from_db()
                assert "own task broker" in target.last_probe["error"], target.last_probe
                run = create_run(target=target, plan=plan)
                assert run_sweep.apply(args=[run.pk]).get() == Run.Status.FAILED
                run.refresh_from_db()
                assert "own task broker" in run.status_reason
            # Loopback written with ideographic full stops is loopback too.
            answer = api.post("/api/v1/targets/", {"name": "sneaky", "model_name": "m",
                                                   "base_urls": [f"http://127\u30020\u30020\u30021:{broker.port}/v1"]},
                              format="json")
            assert answer.status_code == 400 and "own task broker" in answer.json()["base_urls"][0]
        assert not Target.objects.filter(name="sneaky").exists()
        assert broker.accepted == 0
        # Each of those addresses does reach the broker: the refusals above were the policy's.
        for address in own:
            with socket.create_connection((str(address), broker.port), timeout=3):
                pass
        deadline = time.monotonic() + 5
        while broker.accepted < len(own) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert broker.accepted == len(own)
    finally:
        broker.close()


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_the_portals_own_database_is_refused(settings):
    from portal.sweeps.outbound import infrastructure, outbound_policy, validate_outbound_url

    settings.DATABASES = {**settings.DATABASES,
                          "reports": {"ENGINE": "django.db.backends.postgresql", "HOST": "db.internal", "PORT": ""}}
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": "redis://cache.internal:6380/1"}}
    settings.CELERY_RESULT_BACKEND = "db+postgresql://user:pw@10.9.8.7/results"
    services = {(s.label, s.host, s.port) for s in infrastructure()}
    assert {("database (reports)", "db.internal", 5432), ("cache", "cache.internal", 6380),
            ("result backend", "10.9.8.7", 5432)} <= services
    policy = outbound_policy()
    from django.core.exceptions import ValidationError

    for url, what in (("http://db.internal:5432/v1", "database (reports)"), ("http://10.9.8.7:5432", "result backend"),
                      ("http://cache.internal:6380", "cache")):
        with pytest.raises(ValidationError, match=f"own {what.replace('(', '.').replace(')', '.')}"):
            validate_outbound_url(url, policy)


@pytest.mark.parametrize("url", ["http://169.254.169.254/v1", "http://0x7f000001:9100/v1", "http://0.0.0.0:9100",
                                 "http://metadata.google.internal/v1", "http://8.8.8.8/v1",
                                 # Full-width and ideographic dots and digits: what a resolver makes of them.
                                 "http://169\u3002254\u3002169\u3002254/v1", "http://169\uff0e254\uff0e169\uff0e254/v1",
                                 "http://\uff11\uff16\uff19.254.169.254/v1", "http://metadata\u3002google\u3002internal/v1"])
def test_the_form_and_the_api_refuse_what_the_policy_refuses(db, owner, client, url):
    client.force_login(owner)
    response = client.post(reverse("target-create"), {
        "name": "x", "flavor": "openai", "base_urls": url, "model_name": "m", "engine": "other",
        "gpu_source": "none", "queue": "sweeps", "metrics_urls": ""})
    assert response.status_code == 200 and response.context["form"].errors["base_urls"]
    answer = token_client(owner).post("/api/v1/targets/", {"name": "x", "base_urls": ["http://127.0.0.1:9100"],
                                                           "metrics_urls": [url], "model_name": "m"}, format="json")
    assert answer.status_code == 400 and url in answer.json()["metrics_urls"][0]
    assert not Target.objects.exists()


# ---- keys bound to their servers ----------------------------------------------------------------------


def _edit(target, **changes):
    data = {"name": target.name, "flavor": target.flavor, "base_urls": "\n".join(target.base_urls),
            "model_name": target.model_name, "api_key": "", "engine": target.engine, "gpu_source": "none",
            "queue": target.queue, "metrics_urls": ""}
    data.update(changes)
    return data


def test_moving_a_target_with_a_key_needs_the_key_again(transactional_db, member, team, peers, client):
    legit = peers(answer=HTTP_ANSWER)
    evil = peers(answer=HTTP_ANSWER)
    target = Target.objects.create(team=team, name="t", base_urls=[legit.url + "/v1"], model_name="m",
                                   api_key="sk-stored-secret")
    client.force_login(member)
    url = reverse("target-edit", args=[target.pk])
    response = client.post(url, _edit(target, base_urls=f"{legit.url}/v1\n{evil.url}/v1"))
    errors = response.context["form"].errors
    assert "type the API key again, or remove it" in errors["api_key"][0] and evil.url in errors["api_key"][0]
    target.refresh_from_db()
    assert target.base_urls == [legit.url + "/v1"] and target.api_key == "sk-stored-secret"

    api = token_client(member)
    answer = api.patch(f"/api/v1/targets/{target.pk}/", {"base_urls": [legit.url + "/v1", evil.url + "/v1"]},
                       format="json")
    assert answer.status_code == 400 and "type the API key again" in answer.json()["api_key"][0]
    # A path on the same server is the same server: the key stays (the probe's "/v1 missing?" hint).
    assert api.patch(f"/api/v1/targets/{target.pk}/", {"base_urls": [legit.url]}, format="json").status_code == 200
    probe_target.apply(args=[target.pk])  # Test connection now
    assert b"sk-stored-secret" in legit.received  # the key goes where it was entered for
    assert evil.accepted == 0 and b"sk-stored-secret" not in evil.received
    # Re-entering it (or removing it) moves it.
    assert api.patch(f"/api/v1/targets/{target.pk}/", {"base_urls": [evil.url], "api_key": ""},
                     format="json").status_code == 200
    probe_target.apply(args=[target.pk])
    assert evil.accepted >= 1 and b"Authorization" not in evil.received


def test_a_queued_run_does_not_carry_a_new_key_to_the_old_server(transactional_db, team, plan, peers):
    old = peers(answer=HTTP_ANSWER)
    new = peers(answer=HTTP_ANSWER)
    target = Target.objects.create(team=team, name="t", base_urls=[old.url + "/v1"], model_name="m",
                                   api_key="sk-old")
    run = create_run(target=target, plan=plan)  # snapshots the old server
    target.base_urls, target.api_key = [new.url + "/v1"], "sk-new-for-the-new-server"
    target.save()
    run_sweep.apply(args=[run.pk])
    assert old.accepted >= 1 and b"sk-new-for-the-new-server" not in old.received


def test_metrics_urls_never_get_the_key(transactional_db, team, plan, peers):
    server = peers(answer=HTTP_ANSWER)
    metrics = peers(answer=b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n"
                           b"Connection: close\r\n\r\n")
    target = Target.objects.create(team=team, name="t", base_urls=[server.url + "/v1"], model_name="m",
                                   api_key="sk-only-for-the-server", metrics_urls=[metrics.url + "/metrics"])
    run = create_run(target=target, plan=plan)
    run_sweep.apply(args=[run.pk])
    assert b"sk-only-for-the-server" in server.received
    assert metrics.accepted >= 1 and b"sk-only-for-the-server" not in metrics.received


# ---- Test connection is throttled per user --------------------------------------------------------------


@override_settings(EMBPERF_PROBE_RATE="2/minute")
def test_test_connection_is_throttled_per_user(db, owner, member, target, client, monkeypatch):
    from django.core.cache import cache

    from portal import taskqueue

    sent = []
    monkeypatch.setattr(taskqueue.app, "send_task", lambda *a, **kw: sent.append(kw))
    cache.clear()
    url = reverse("target-probe", args=[target.pk])
    client.force_login(owner)
    for _ in range(2):
        assert client.post(url, HTTP_ACCEPT="application/json").status_code == 200
    answer = client.post(url, HTTP_ACCEPT="application/json")
    assert answer.status_code == 429 and int(answer["Retry-After"]) > 0
    assert "Too many connection tests: at most 2/minute per user" in answer.json()["error"]
    assert "Too many connection tests" in answer.json()["html"]
    page = client.post(url, follow=True)
    assert "Too many connection tests" in page.content.decode()
    assert len(sent) == 2
    client.force_login(member)  # another user has a budget of their own
    assert client.post(url, HTTP_ACCEPT="application/json").status_code == 200
    assert len(sent) == 3
    cache.clear()


# ---- ingest ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "url", "message"), [
    ("base_urls", "javascript:alert(1)", "has no http:// or https:// scheme"),
    ("base_urls", "http://169.254.169.254/v1", "link-local"),
    ("metrics_urls", "http://[::ffff:169.254.169.254]/metrics", "link-local"),
    ("base_urls", "http://a/v1 http://b/v1", "is not one URL"),
])
def test_ingested_urls_pass_the_forms_validation(db, owner, key, url, message):
    from tests.api_support import document

    doc = document()
    doc["target"][key] = [url]
    answer = token_client(owner).post("/api/v1/ingest/", doc, format="json")
    assert answer.status_code == 400
    assert message in " ".join(answer.json()[f"target.{key}[0]"])
    assert not Run.objects.exists()


# ---- check --deploy ---------------------------------------------------------------------------------------


def test_check_deploy_warns_about_the_default_allowlist(settings):
    from portal.sweeps.checks import allowlist_is_set

    settings.DEBUG = False
    settings.EMBPERF_ALLOWED_TARGETS = ""
    (warning,) = allowlist_is_set(None)
    assert warning.id == "embperf.W001" and "EMBPERF_ALLOWED_TARGETS" in warning.msg
    settings.EMBPERF_ALLOWED_TARGETS = "10.20.0.0/16"
    assert allowlist_is_set(None) == []
    settings.DEBUG, settings.EMBPERF_ALLOWED_TARGETS = True, ""
    assert allowlist_is_set(None) == []


# ---- run --push -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [b"302 Found", b"307 Temporary Redirect", b"308 Permanent Redirect"])
def test_push_never_takes_the_token_to_where_a_redirect_points(peers, status):
    from benchmarks.push import PushError, push_document

    elsewhere = peers(answer=HTTP_ANSWER)
    portal = peers(answer=b"HTTP/1.1 " + status + b"\r\nLocation: http://localhost:" + str(elsewhere.port).encode()
                   + b"/api/v1/ingest/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    with pytest.raises(PushError) as info:
        push_document(portal.url, "tok-very-secret", {"schema": "embperf.run/1"}, timeout_s=5)
    code = status[:3].decode()
    assert f"redirects (HTTP {code}) to http://localhost:{elsewhere.port}/api/v1/ingest/" in str(info.value)
    assert b"tok-very-secret" in portal.received
    assert elsewhere.accepted == 0


def test_push_warns_before_sending_a_token_over_plain_http(monkeypatch):
    import argparse
    import io

    from rich.console import Console

    from benchmarks import push

    assert push.plain_http_warning("http://127.0.0.1:8000") is None
    assert push.plain_http_warning("http://localhost:8000") is None
    assert push.plain_http_warning("https://portal.example.com") is None
    assert "unencrypted to portal.example.com" in push.plain_http_warning("http://portal.example.com")

    def refuse(*args, **kwargs):
        raise push.PushError("could not reach the portal")

    monkeypatch.setattr(push, "push_document", refuse)
    out, err = (Console(record=True, width=300, file=io.StringIO()) for _ in range(2))
    args = argparse.Namespace(push="http://10.1.2.3:8000", token="t", team=None)
    assert push.push_from_cli(args, {}, out, err) is False
    assert "warning: --push sends the API token unencrypted to 10.1.2.3 over plain http://" in err.export_text()


def test_check_deploy_warns_when_throttles_are_counted_per_process(settings, monkeypatch):
    from portal.sweeps.checks import throttles_are_shared

    settings.DEBUG = False
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    (warning,) = throttles_are_shared(None)
    assert warning.id == "embperf.W002" and "EMBPERF_CACHE_URL" in warning.hint
    monkeypatch.setenv("WEB_CONCURRENCY", "1")
    assert throttles_are_shared(None) == []
    monkeypatch.setenv("WEB_CONCURRENCY", "2")
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": "redis://127.0.0.1:6379/1"}}
    assert throttles_are_shared(None) == []
