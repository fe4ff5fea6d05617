"""The outbound policy (benchmarks/outbound.py): what it refuses, in every spelling, and that a
connection goes only to the address that was checked (DNS rebinding gets nowhere).

Servers here are real local sockets; "saw nothing" means their accept queue stayed empty.
"""
import asyncio
import socket
import threading

import aiohttp
import pytest

from benchmarks import outbound
from benchmarks.outbound import OutboundPolicy, OutboundRefused, Service, parse_rules


def refused(policy: OutboundPolicy, url: str) -> str:
    with pytest.raises(OutboundRefused) as info:
        policy.check_url(url)
    return str(info.value)


DEFAULT = OutboundPolicy()


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.0.1:8080/v1",
    "http://[fe80::1]/v1",
    "http://[fd00:ec2::254]/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://METADATA.google.internal./",
    "http://0.0.0.0:9100/v1",
    "http://[::]:9100/v1",
    "http://224.0.0.251/",
    "http://[ff02::1]/",
    "http://255.255.255.255/",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://8.8.8.8/v1",
])
def test_refused_always_or_outside_the_default(url):
    message = refused(DEFAULT, url)
    assert message.startswith("refused by the outbound policy:") and "EMBPERF_ALLOWED_TARGETS" in message


@pytest.mark.parametrize("host", ["0x7f000001", "2130706433", "0177.0.0.1", "127.1", "0x7f.1"])
def test_odd_spellings_of_an_address_are_refused_with_the_plain_one(host):
    assert refused(DEFAULT, f"http://{host}:9100/v1") == (
        f"{host} is an unusual spelling of the address 127.0.0.1: write 127.0.0.1")


@pytest.mark.parametrize("url", ["http://127.0.0.1:9100/v1", "http://localhost:9100", "http://[::1]:9100",
                                 "http://[::ffff:127.0.0.1]:9100", "http://10.1.2.3:30000/v1",
                                 "http://192.168.1.20:8080", "http://gpu-host-1:30000/v1"])
def test_default_allows_loopback_private_and_leaves_names_to_connect_time(url):
    DEFAULT.check_url(url)


def test_the_portals_own_services_are_refused_on_every_loopback_spelling():
    policy = OutboundPolicy(infrastructure=(Service("database", "localhost", 5432),
                                            Service("task broker", "10.0.0.7", 5672)))
    for url in ("http://127.0.0.1:5432", "http://localhost:5432/v1", "http://127.0.0.2:5432",
                "http://[::1]:5432", "http://[::ffff:127.0.0.1]:5432"):
        assert "is this portal's own database" in refused(policy, url)
    assert "is this portal's own task broker" in refused(policy, "http://10.0.0.7:5672/")
    policy.check_url("http://127.0.0.1:5433")  # another port of the same host is someone else's
    policy.check_url("http://10.0.0.8:5672")


def test_an_allowlist_restricts_and_only_explicit_entries_open_the_refused():
    policy = OutboundPolicy.from_setting(
        "10.20.0.0/16:30000, gpu-host:8000 *.lab.example.com [::1]:9100 169.254.169.254 127.0.0.1:5432",
        infrastructure=[("database", "127.0.0.1", 5432)])
    policy.check_url("http://10.20.3.4:30000/v1")
    assert "not among the allowed targets" in refused(policy, "http://10.20.3.4:30001/v1")
    assert "not among the allowed targets" in refused(policy, "http://127.0.0.1:9100/v1")
    policy.check_url("http://[::1]:9100")
    policy.check_url("http://169.254.169.254/")  # named itself
    assert "link-local" in refused(policy, "http://169.254.169.253/")
    policy.check_url("http://127.0.0.1:5432")  # the service's port named explicitly
    everything = OutboundPolicy.from_setting("*", infrastructure=[("database", "127.0.0.1", 5432)])
    everything.check_url("http://8.8.8.8/")
    assert "link-local" in refused(everything, "http://169.254.169.254/")  # "*" is not explicit
    assert "own database" in refused(everything, "http://127.0.0.1:5432/")
    wide = OutboundPolicy.from_setting("0.0.0.0/0")
    assert "link-local" in refused(wide, "http://169.254.169.254/")


@pytest.mark.parametrize(("text", "message"), [
    ("10.0.0.0/33", "'10.0.0.0/33' is not an address or network"),
    ("gpu-host:99999", "'gpu-host:99999': the port must be a number from 1 to 65535"),
    ("http://gpu-host", "'http://gpu-host'"),
    ("bad_host!", "'bad_host!' is not a host name, address or network"),
])
def test_a_bad_allowlist_entry_is_named(text, message):
    with pytest.raises(ValueError) as info:
        parse_rules(text)
    assert message in str(info.value)


def test_a_bad_allowlist_in_the_environment_is_a_config_error():
    from benchmarks.errors import ConfigError

    with pytest.raises(ConfigError, match="EMBPERF_ALLOWED_TARGETS: '10.0.0.0/33'"):
        OutboundPolicy.from_environment({"EMBPERF_ALLOWED_TARGETS": "10.0.0.0/33"})


# ---- connect time: resolve once, check, pin --------------------------------------------------------


class Listener:
    """A TCP listener that counts the connections it accepted and answers each with one embedding."""

    BODY = b'{"data": [{"embedding": [0.5, 0.5], "index": 0}], "model": "m"}'

    def __init__(self, host="127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.received = b""
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.settimeout(2)
                try:
                    data = conn.recv(65536)
                    self.received += data
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(self.BODY)).encode() + b"\r\nConnection: close\r\n\r\n" + self.BODY)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


@pytest.fixture
def fake_dns(monkeypatch):
    """A hosts-style mapping: name -> list of addresses returned by successive lookups (the last repeats)."""
    table: dict[str, list[str]] = {}
    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in table:
            lookups.append(host)
            answers = table[host]
            address = answers.pop(0) if len(answers) > 1 else answers[0]
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (address, port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    table["lookups"] = lookups  # type: ignore[assignment]
    return table


async def _get(policy, url):
    async with aiohttp.ClientSession(connector=outbound.connector(policy)) as session:
        async with session.post(url, data=b"{}", allow_redirects=False) as response:
            return response.status, await response.read()


def test_a_name_resolving_to_a_refused_address_sends_nothing(listener, fake_dns):
    # evil.test resolves to the listener's address, which this policy refuses (not in 10.0.0.0/8).
    fake_dns["evil.test"] = ["127.0.0.1"]
    policy = OutboundPolicy.from_setting("10.0.0.0/8")
    with pytest.raises(OutboundRefused, match=r"evil.test \(127.0.0.1\) port \d+ is not among the allowed"):
        asyncio.run(_get(policy, f"http://evil.test:{listener.port}/v1/embeddings"))
    assert listener.accepted == 0


def test_a_name_resolving_to_metadata_sends_nothing(fake_dns):
    fake_dns["metadata.evil.test"] = ["169.254.169.254"]
    with pytest.raises(OutboundRefused, match="metadata.evil.test \\(169.254.169.254\\) is a link-local"):
        asyncio.run(_get(OutboundPolicy.from_setting("*"), "http://metadata.evil.test/v1/embeddings"))


def test_dns_rebinding_gets_the_checked_address_only(listener, fake_dns):
    # The first lookup answers an allowed address, every later one the metadata service: the
    # connection must go to the first answer, the one that was checked.
    fake_dns["rebind.test"] = ["127.0.0.1", "169.254.169.254"]
    connected = []
    real_connect = socket.socket.connect

    def spy(self, address):
        connected.append(address[0])
        return real_connect(self, address)

    policy = OutboundPolicy()
    try:
        socket.socket.connect = spy
        status, _ = asyncio.run(_get(policy, f"http://rebind.test:{listener.port}/v1/embeddings"))
    finally:
        socket.socket.connect = real_connect
    assert status == 200 and listener.accepted == 1
    assert fake_dns["lookups"] == ["rebind.test"]  # resolved once
    assert connected and "169.254.169.254" not in connected


def test_a_literal_address_is_checked_by_the_socket_factory(listener):
    # aiohttp connects to a literal address without asking any resolver: the socket factory checks it.
    policy = OutboundPolicy.from_setting("10.0.0.0/8")
    with pytest.raises(OutboundRefused, match="not among the allowed targets"):
        asyncio.run(_get(policy, f"http://127.0.0.1:{listener.port}/v1/embeddings"))
    assert listener.accepted == 0
    status, _ = asyncio.run(_get(OutboundPolicy(), f"http://127.0.0.1:{listener.port}/v1/embeddings"))
    assert status == 200 and listener.accepted == 1


def test_the_policy_travels_to_load_processes():
    import pickle

    policy = OutboundPolicy.from_setting("10.0.0.0/8:30000 gpu-host", infrastructure=[("database", "db", 5432)])
    assert pickle.loads(pickle.dumps(policy)) == policy


def test_the_load_checks_every_connection_too(listener, fake_dns):
    # The probe's lookup answers the listener; from then on the name points at the metadata service.
    # The load's connections are refused (connect errors saying why), and nothing reaches 169.254.
    from benchmarks.sweep import run_sweep

    fake_dns["flip.test"] = ["127.0.0.1", "169.254.169.254"]
    doc = run_sweep({"flavor": "openai", "base_urls": [f"http://flip.test:{listener.port}/v1"], "model": "m"},
                    {"levels": [1], "warmup_s": 0, "duration_s": 0.3, "tokens": 4, "dimensions": 2,
                     "timeout_s": 2, "abort_error_rate": 1.0}, outbound=OutboundPolicy())
    (level,) = doc["levels"]
    assert listener.accepted == 1  # the probe; no load request got through
    assert level["requests_ok"] == 0 and level["errors"]["connect_error"] == level["requests_failed"] > 0
    assert "flip.test (169.254.169.254) is a link-local address" in level["error_examples"]["connect_error"]
