"""Attacks on a running stack (a Celery worker, the portal through a driver, hostile servers this
test starts): what a hostile server or a team without a grant tries, what the portal refuses, and
what the hostile server did and did not receive.

One stack for the module: the embedded default (SQLite file, file-system broker), a worker on a
queue of its own, granted to the stack's team.
"""
import contextlib
import html
import re
import socket
import threading
import time

import httpx
import orjson
import psutil
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from benchmarks.answers import MIB, answer_limit
from benchmarks.simulator import running_simulator
from tests import e2e_support as e2e
from tests.test_engine_hostile import HostileServer, head

pytestmark = pytest.mark.e2e

HUGE_VALUES = 10_000_000
VALUE = b"0.123456789,"  # 12 bytes: a 10,000,000-float vector is 120 MB on the wire
# The worker's process tree may grow by this much during an attack; one hostile answer read whole
# and parsed (the behaviour this guards against) takes well over 1 GiB.
MEMORY_BOUND = 150 * MIB


@pytest.fixture(scope="module")
def simulator():
    with running_simulator() as sim:
        yield sim


class RecordingHub:
    """A stand-in for the Hugging Face Hub on one of this host's addresses outside the default allowlist
    (loopback and private ranges), recording every request it gets."""

    def __init__(self):
        from benchmarks.outbound import OutboundPolicy, OutboundRefused, host_addresses

        self.requests: list[bytes] = []
        self.address = None
        for address in sorted(host_addresses(), key=str):
            try:
                OutboundPolicy().check_address(address, 80)
            except OutboundRefused:
                if address.version == 4 and not address.is_loopback and not address.is_link_local:
                    self.address = str(address)
                    break
        if self.address is None:
            return
        self.sock = socket.socket()
        self.sock.bind((self.address, 0))
        self.sock.listen(16)
        self.url = f"http://{self.address}:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.requests.append(conn.recv(65536))
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    def close(self):
        if self.address is not None:
            self.sock.close()


@pytest.fixture(scope="module")
def hub():
    recording = RecordingHub()
    yield recording
    recording.close()


@pytest.fixture(scope="module")
def stack(simulator, tmp_path_factory, hub):
    var_dir = tmp_path_factory.mktemp("e2e-attacks")
    queue = e2e.unique_name("e2e_attacks")
    tokenizers = var_dir / "tokenizer-folder"
    tokenizers.mkdir()
    env = e2e.base_env(var_dir, database_url=f"sqlite:///{var_dir / 'e2e.sqlite3'}", broker_url="filesystem://",
                       extra={"EMBPERF_TOKENIZER_DIR": str(tokenizers),
                              **({"HF_ENDPOINT": hub.url} if hub.address else {})})
    with e2e.worker_stack(env, queue, var_dir, simulator.base_url) as parts:
        yield {**parts, "queue": queue, "tokenizers": tokenizers, "var_dir": var_dir, "env": env}


@pytest.fixture
def servers():
    started = []

    def start(answer):
        server = HostileServer(answer)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


async def ten_million_floats(request, writer):
    """A 200 answer whose one vector has 10,000,000 values, streamed (no Content-Length) so the client
    has to read it to know its size."""
    writer.write(head(extra=b"Transfer-Encoding: chunked\r\n") + chunk(b'{"data": [{"index": 0, "embedding": ['))
    piece = VALUE * 8192
    for _ in range(HUGE_VALUES // 8192):
        writer.write(chunk(piece))
        await writer.drain()
    writer.write(chunk(b'0.1]}], "model": "m"}') + b"0\r\n\r\n")
    await writer.drain()
    return True


def good_answer(dims: int) -> bytes:
    return orjson.dumps({"data": [{"index": 0, "embedding": [0.01] * dims}], "model": "m"})


class TreeMemory:
    """Samples the resident memory of a process and all its children every 20 ms, in a thread."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.baseline = self.now()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def now(self) -> int:
        total = 0
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak - self.baseline


def run_to_the_end(stack, target: int, plan: int, label: str) -> dict:
    driver = stack["driver"]
    started = driver.call("start", target=target, plan=plan, label=label)
    return e2e.wait_for(driver, started["run"], lambda s: s["status"] not in ("queued", "running"),
                        timeout=120, worker=stack["worker"]) | {"run": started["run"]}


# ---- 1. memory is bounded by embperf, never by the server -------------------------------------------

def test_a_server_claiming_ten_million_dimensions_fails_the_probe_in_bounded_memory(stack, servers):
    server = servers(ten_million_floats)
    driver = stack["driver"]
    target = driver.call("target", name="ten-million", base_urls=[server.url + "/v1"], queue=stack["queue"])["target"]
    plan = driver.call("plan", name="any-length", levels=[4], warmup_s=0, duration_s=2, tokens=16,
                       timeout_s=30)["plan"]
    memory = TreeMemory(stack["worker"].proc.pid)
    state = run_to_the_end(stack, target, plan, "ten million")
    grew = memory.stop()
    print(f"worker tree: baseline {memory.baseline / MIB:.0f} MiB, grew {grew / MIB:.1f} MiB")
    assert state["status"] == "failed"
    assert f"answer larger than {answer_limit(1, None) / MIB:.3g} MiB" in state["reason"]
    assert "at most 16,384 values, this installation's maximum vector length (EMBPERF_MAX_VECTOR_LENGTH)" \
        in state["reason"]
    assert state["levels"] == []  # not one request counted, successful or not
    # The hostile server got the probe and nothing else: no load was sent to it ...
    assert [(r["method"], r["path"]) for r in server.requests] == [("POST", "/v1/embeddings")]
    # ... and could not push its 120 MB answer: the worker dropped the connection at the cap (what was
    # sent beyond it sat in the kernel's socket buffers).
    assert max(server.sent) < answer_limit(1, None) + 40 * MIB < HUGE_VALUES * len(VALUE)
    assert grew < MEMORY_BOUND, f"the worker's processes grew by {grew / MIB:.0f} MiB"


def test_a_server_that_turns_to_ten_million_floats_after_the_probe_gets_no_successes(stack, servers):
    answered = {"good": 0}

    async def probe_then_huge(request, writer):
        if answered["good"] == 0:  # the probe: an honest 1,024-value vector (no usage: one calibration request)
            answered["good"] += 1
            body = good_answer(1024)
            writer.write(head(length=len(body)) + body)
            await writer.drain()
            return True
        return await ten_million_floats(request, writer)

    server = servers(probe_then_huge)
    driver = stack["driver"]
    target = driver.call("target", name="turns", base_urls=[server.url + "/v1"], queue=stack["queue"])["target"]
    plan = driver.call("plan", name="turns", levels=[4], warmup_s=0, duration_s=3, tokens=16, timeout_s=30,
                       abort_error_rate=1.0)["plan"]
    memory = TreeMemory(stack["worker"].proc.pid)
    state = run_to_the_end(stack, target, plan, "turns")
    grew = memory.stop()
    print(f"worker tree: baseline {memory.baseline / MIB:.0f} MiB, grew {grew / MIB:.1f} MiB")
    loads = [r for r in server.requests[1:] if r["method"] == "POST"]
    assert len(loads) >= 4, state  # the load did reach the server ...
    assert state["levels"], state
    for level in state["levels"]:
        assert level["requests_ok"] == 0  # ... and not one of its 10,000,000-float answers counted
        assert level["error_rate"] == 1.0
    # Each answer was cut at the cap for one 1,024-value vector (about 113 KiB), before any parsing.
    cap = answer_limit(1, 1024)
    assert cap < 0.2 * MIB
    assert max(server.sent[1:]) < cap + 40 * MIB
    assert grew < MEMORY_BOUND, f"the worker's processes grew by {grew / MIB:.0f} MiB"


# ---- 3. one gate for work: resume, enqueue and run again check the queue grant --------------------

def test_a_withdrawn_grant_stops_resume_enqueue_and_run_again(stack, servers):
    async def failing(request, writer):
        writer.write(head("503 Service Unavailable", length=2) + b"{}")
        await writer.drain()
        return True

    server = servers(failing)
    driver, queue = stack["driver"], stack["queue"]
    target = driver.call("target", name="withdrawn", base_urls=[server.url + "/v1"], queue=queue)["target"]
    plan = driver.call("plan", name="withdrawn", levels=[1, 2], warmup_s=0, duration_s=1, tokens=16,
                       timeout_s=5)["plan"]
    failed = run_to_the_end(stack, target, plan, "before the withdrawal")
    assert failed["status"] == "failed" and len(server.requests) == 1
    refused = driver.call("broker_refused_run", target=target, plan=plan)["run"]
    assert driver.call("grant", queue=queue, granted=False) == {"granted": False}
    try:
        runs_before = driver.call("runs")["runs"]
        not_granted = f"The queue “{queue}” is not granted to E2E"

        answer = driver.call("api", method="POST", path=f"/api/v1/runs/{failed['run']}/resume/")
        assert answer["status"] == 400 and answer["json"]["target"][0].startswith(not_granted), answer
        page = driver.call("post_page", name="run-resume", args=[failed["run"]])
        assert page["path"] == f"/runs/{failed['run']}/" and not_granted in page["html"]

        answer = driver.call("api", method="POST", path=f"/api/v1/runs/{refused}/enqueue/")
        assert answer["status"] == 400 and answer["json"]["target"][0].startswith(not_granted), answer
        page = driver.call("post_page", name="run-enqueue", args=[refused])
        assert not_granted in page["html"]
        assert driver.call("run", run=refused)["status"] == "failed"  # still refused, not queued

        # Run again: the run page's button opens the start form with the same target and plan; the API repeats.
        page = driver.call("post_page", name="run-create", data={"target": target, "plan": plan})
        assert page["status"] == 200 and not_granted in page["html"]
        answer = driver.call("api", method="POST", path=f"/api/v1/runs/{failed['run']}/repeat/")
        assert answer["status"] == 400 and answer["json"]["target"][0].startswith(not_granted), answer
        answer = driver.call("api", method="POST", path="/api/v1/runs/", body={"target": target, "plan": plan})
        assert answer["status"] == 400 and answer["json"]["target"][0].startswith(not_granted), answer

        assert driver.call("runs")["runs"] == runs_before  # nothing was created
        time.sleep(3)  # had anything been published, the worker would have probed the server by now
        assert len(server.requests) == 1
    finally:
        driver.call("grant", queue=queue, granted=True)
    # With the grant back, the same resume is published and reaches the server: the refusal above was the gate's.
    answer = driver.call("api", method="POST", path=f"/api/v1/runs/{failed['run']}/resume/")
    assert answer["status"] == 201, answer
    e2e.wait_for(driver, answer["json"]["id"], lambda s: s["status"] not in ("queued", "running"), timeout=60,
                 worker=stack["worker"])
    assert len(server.requests) == 2



# ---- 2. a target's tokenizer reads no file outside the operator's folder --------------------------

SECRET = "TOPSECRET-abc123"


def test_tokenizer_paths_out_of_the_folder_read_nothing_and_tell_nothing(stack, servers, simulator):
    server = servers(lambda request, writer: None)  # a target server that must not even be asked
    driver, folder = stack["driver"], stack["tokenizers"]
    secret = stack["var_dir"] / "secret.json"
    secret.write_text(f'"{SECRET}"')  # a JSON string: the parser's message would quote it
    (folder / "link").mkdir()
    (folder / "link" / "tokenizer.json").symlink_to(secret)
    (folder / "broken").mkdir()
    (folder / "broken" / "tokenizer.json").write_text(f'"{SECRET}"')
    plan = driver.call("plan", name="tokens", levels=[1], warmup_s=0, duration_s=1, tokens=16, timeout_s=5)["plan"]
    reasons = {}
    # Saved before the rule existed (the driver writes the rows directly): the worker checks again.
    for spec in [str(secret), "/nonexistent/x.json", "~/x.json", "link/tokenizer.json", "../secret.json",
                 "broken/tokenizer.json"]:
        target = driver.call("target", name=f"tok {spec}", base_urls=[server.url + "/v1"], queue=stack["queue"],
                             tokenizer=spec)["target"]
        state = run_to_the_end(stack, target, plan, spec)
        assert state["status"] == "failed", state
        reasons[spec] = state["reason"]
    for reason in reasons.values():
        assert "is not a usable tokenizer" in reason, reason
        assert SECRET not in reason and "does not exist" not in reason and "invalid type" not in reason
    # An existing file and a missing one read the same: the reason tells nothing about the worker's disk.
    generic = {reason.replace(repr(spec), "SPEC") for spec, reason in reasons.items()
               if spec != "broken/tokenizer.json"}
    assert len(generic) == 1, generic
    assert SECRET not in stack["worker"].log()
    assert server.requests == []  # every run stopped before its first request

    # A tokenizer file inside the folder is read, and the run measures with it.
    good = Tokenizer(models.WordLevel({"[UNK]": 0, "the": 1}, unk_token="[UNK]"))
    good.pre_tokenizer = pre_tokenizers.Whitespace()
    (folder / "good").mkdir()
    good.save(str(folder / "good" / "tokenizer.json"))
    target = driver.call("target", name="tok good", base_urls=[simulator.base_url], model_name="sim-embed",
                         queue=stack["queue"], tokenizer="good/tokenizer.json")["target"]
    state = run_to_the_end(stack, target, plan, "good tokenizer")
    assert state["status"] == "succeeded", state


# ---- 5. throttles hold across web processes ---------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_web_processes(stack):
    """gunicorn with two worker processes on the stack's database, counting throttles in a Redis of its own."""
    redis = e2e.RedisServer(free_port(), stack["var_dir"] / "redis.log")
    env = {**stack["env"], "EMBPERF_CACHE_URL": redis.url, "EMBPERF_PROBE_RATE": "10/minute"}
    # Each access line names the process that answered.
    web = e2e.WebServer(env, stack["var_dir"] / "web.log", workers=2, access_format="ANSWERED %(p)s %(r)s %(s)s")
    try:
        yield {"url": web.wait_url(), "web": web, "redis": redis}
    finally:
        web.stop()
        redis.stop()


def test_the_probe_throttle_holds_across_two_web_processes(stack, two_web_processes):
    driver, base = stack["driver"], two_web_processes["url"]
    username = driver.call("password", password="throttle-test-password")["username"]
    target = stack["ids"]["target"]
    with httpx.Client(base_url=base, follow_redirects=False, timeout=30) as http:
        http.get("/accounts/login/")
        signed_in = http.post("/accounts/login/", data={
            "username": username, "password": "throttle-test-password",
            "csrfmiddlewaretoken": http.cookies["csrftoken"]})
        assert signed_in.status_code == 302, signed_in.text[:500]
        statuses = []
        for _ in range(30):
            # A new connection each time, so that both processes take probes.
            answer = http.post(f"/targets/{target}/probe/", headers={
                "X-CSRFToken": http.cookies["csrftoken"], "Accept": "application/json", "Connection": "close"})
            statuses.append(answer.status_code)
    time.sleep(0.5)
    answered = re.findall(r"ANSWERED <(\d+)> POST /targets/\d+/probe/ \S+ (\d+)", two_web_processes["web"].log())
    assert len(answered) == 30, two_web_processes["web"].log()[-2000:]
    assert len({pid for pid, _ in answered}) == 2, answered  # both processes answered probes ...
    # ... and kept one count: ten probes a minute in all, whichever process answered.
    assert statuses.count(429) == 20 and len([s for s in statuses if s < 400]) == 10, statuses


# ---- 6. hub downloads go through the outbound policy --------------------------------------------------

def test_a_hub_the_policy_refuses_gets_nothing_from_the_worker(stack, servers, hub):
    if hub.address is None:
        pytest.skip("this host has no address outside the default allowlist to put the hub on")
    server = servers(lambda request, writer: None)
    driver = stack["driver"]
    target = driver.call("target", name="hub model", base_urls=[server.url + "/v1"], queue=stack["queue"],
                         tokenizer="someorg/somemodel")["target"]
    plan = driver.call("plan", name="hub", levels=[1], warmup_s=0, duration_s=1, tokens=16, timeout_s=5)["plan"]
    state = run_to_the_end(stack, target, plan, "hub refused")
    assert state["status"] == "failed"
    assert f"cannot fetch someorg/somemodel from {hub.url}" in state["reason"]
    assert "refused by the outbound policy" in state["reason"] and "EMBPERF_ALLOWED_TARGETS" in state["reason"]
    assert hub.requests == [] and server.requests == []  # neither the hub nor the target heard anything
    # The hub does listen there: the refusal was the policy's.
    with socket.create_connection((hub.address, int(hub.url.rsplit(":", 1)[1])), timeout=3) as probe_conn:
        probe_conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert probe_conn.recv(100).startswith(b"HTTP/1.1 404")


# ---- 7. host names are normalised before the literal-address check, at save ------------------------

def signed_in(base: str, driver) -> httpx.Client:
    """An HTTP session of the stack's user on a web server of the stack, signed in with its password."""
    username = driver.call("password", password="attack-test-password")["username"]
    http = httpx.Client(base_url=base, follow_redirects=False, timeout=30)
    http.get("/accounts/login/")
    answer = http.post("/accounts/login/", data={"username": username, "password": "attack-test-password",
                                                 "csrfmiddlewaretoken": http.cookies["csrftoken"]})
    assert answer.status_code == 302, answer.text[:500]
    return http


def test_full_width_dots_are_refused_at_save_by_the_running_web_server(stack, two_web_processes):
    """`127。0。0。1:P` with P the port of the web server's own cache (its Redis), and `169。254。169。254`:
    refused by the API and the page's form with the policy's reason; nothing saved, nothing contacted."""
    driver, base, redis = stack["driver"], two_web_processes["url"], two_web_processes["redis"]
    token = driver.call("token")["token"]
    own_cache = f"http://127\u30020\u30020\u30021:{redis.port}/v1"
    metadata = "http://169\u3002254\u3002169\u3002254/v1"
    reasons = {own_cache: f"127.0.0.1 port {redis.port} is this portal's own cache",
               metadata: "169.254.169.254 is a link-local address, where cloud metadata services answer"}
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=auth, timeout=30) as api, \
            contextlib.closing(signed_in(base, driver)) as page:
        team = next(t["id"] for t in api.get("/api/v1/teams/").json()["results"] if t["name"] == "E2E")
        before = api.get("/api/v1/targets/").json()["count"]
        answers = {}
        for n, url in enumerate(reasons):
            answers[("api", url)] = api.post("/api/v1/targets/", json={
                "team": team, "name": f"full-width api {n}", "base_urls": [url], "model_name": "m",
                "queue": stack["queue"]})
            answers[("page", url)] = page.post("/targets/new/", data={
                "team": team, "name": f"full-width page {n}", "flavor": "openai", "base_urls": url,
                "model_name": "m", "engine": "other", "gpu_source": "none", "queue": stack["queue"],
                "metrics_urls": "", "csrfmiddlewaretoken": page.cookies["csrftoken"]})
        after = api.get("/api/v1/targets/", params={"page_size": 500}).json()["results"]
    # Had any been saved, its connection test is what an attacker would try next: the worker (whose own
    # check does not know the web server's cache) would send its request to the Redis.
    saved = [t["id"] for t in after if t["name"].startswith("full-width")]
    for target in saved:
        driver.call("api", method="POST", path=f"/api/v1/targets/{target}/probe/")
        deadline = time.monotonic() + 30
        while driver.call("api", method="GET", path=f"/api/v1/targets/{target}/probe/")["json"].get("pending") \
                and time.monotonic() < deadline:
            time.sleep(0.2)
    for (where, url), answer in answers.items():
        if where == "api":
            assert answer.status_code == 400, (url, answer.status_code, answer.text[:500])
            message = answer.json()["base_urls"][0]
        else:  # the form comes back with its error, no redirect to a saved target's page
            assert answer.status_code == 200, (url, answer.status_code, answer.headers.get("Location"))
            message = html.unescape(answer.text)
        assert f"“{url}”: refused by the outbound policy: {reasons[url]}" in message, (where, url, message[:3000])
    assert saved == [] and len(after) == before
    # Redis answers an HTTP request with a warning in its log: none came.
    assert "SECURITY ATTACK" not in (stack["var_dir"] / "redis.log").read_text(errors="replace")


# ---- 8. a token limited to teams that are all gone sees nothing ---------------------------------------

def test_a_token_whose_only_team_is_deleted_is_refused_by_the_running_api(stack, two_web_processes):
    driver, base = stack["driver"], two_web_processes["url"]
    other = driver.call("team", name="Other E2E", target="other-team-target")
    doomed = driver.call("team", name="Doomed E2E", target="doomed-target")
    limited = driver.call("token", teams=[doomed["team"]])["token"]
    everything = driver.call("token")["token"]
    # A run of the stack's team (recorded, never published): a widened token would list it.
    run = driver.call("broker_refused_run", target=stack["ids"]["target"], plan=stack["ids"]["short"])["run"]

    def get(token: str, path: str) -> httpx.Response:
        return httpx.get(base + path, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    # Before: the token sees its one team and that team's target, nothing of the user's other teams.
    assert [t["name"] for t in get(limited, "/api/v1/teams/").json()["results"]] == ["Doomed E2E"]
    assert [t["name"] for t in get(limited, "/api/v1/targets/").json()["results"]] == ["doomed-target"]
    assert get(limited, "/api/v1/runs/").json()["results"] == []
    assert get(limited, f"/api/v1/targets/{other['target']}/").status_code == 404

    assert driver.call("delete_team", team=doomed["team"]) == {"deleted": True}
    # After: revoked with its team, on every route, rather than widened to all of its user's teams.
    for path in ["/api/v1/teams/", "/api/v1/targets/", "/api/v1/runs/", "/api/v1/plans/",
                 f"/api/v1/targets/{other['target']}/", f"/api/v1/targets/{stack['ids']['target']}/",
                 f"/api/v1/runs/{run}/"]:
        answer = get(limited, path)
        assert answer.status_code == 401, (path, answer.status_code, answer.text[:500])
        assert answer.json() == {"detail": "This API token was revoked."}
        assert "other-team-target" not in answer.text and "simulator" not in answer.text
    # The user's other teams are there, and a token never limited still sees them: the 401 is the token's.
    names = {t["name"] for t in get(everything, "/api/v1/teams/").json()["results"]}
    assert {"E2E", "Other E2E"} <= names and "Doomed E2E" not in names
    assert get(everything, f"/api/v1/targets/{other['target']}/").status_code == 200
    assert get(everything, f"/api/v1/runs/{run}/").status_code == 200
