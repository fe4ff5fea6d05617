"""The outbound policy: which addresses the engine may contact, checked where packets leave.

A target's base URLs and metrics URLs are typed by people, and the engine sends requests to them
from a worker inside a company network. Left unchecked, that makes the worker a tool to reach what
only it can reach: the cloud metadata service, the portal's own database and broker, other
teams' machines. So every address the engine contacts (probe, calibration, load, metrics and
GPU-agent scrapes) passes one check, twice:

- when a URL is saved (`check_url`, no DNS: literal addresses in any spelling, `localhost`, and
  names the policy knows), so the form, the API and ingest can say what is wrong at once;
- when a connection is opened (`connector`): a host name is resolved once, every address it
  resolves to is checked, and the connection goes to exactly those checked addresses (a resolver of
  our own plus a socket factory that checks each address again before its socket exists). A name
  that resolves to an allowed address on the first lookup and to a refused one on the next (DNS
  rebinding) therefore gets nowhere.

Refused always, unless an operator lists them explicitly in `EMBPERF_ALLOWED_TARGETS`:
link-local addresses and cloud metadata services, unspecified, multicast and broadcast
addresses, and the portal's own services (database, broker, result backend and cache host:ports,
passed in as `infrastructure`; this module knows nothing of the portal). A service on this host is
refused at that port on every address of the host (loopback, each interface's address, what the host
name resolves to), since a service bound to all addresses answers on each. Everything else must be
covered by the allowlist; the default allows loopback and private ranges, so a demo on one machine
and a company network both work. Redirects are never followed anywhere in the engine, so no answer
can send a request somewhere the check did not see.

Allowlist syntax (comma- or space-separated): an address or CIDR (`10.0.0.0/8`, `192.168.1.20`,
`[fd00::/8]`), a host name (`gpu-host-1`) or every name under a domain (`*.lab.example.com`),
each with an optional port (`10.0.0.0/8:30000`, `gpu-host-1:8000`, `[::1]:9100`), or `*` for any
address (which still does not open what is refused always). "Explicitly" means an entry within the
refused range itself (`169.254.169.254`), or, for the portal's services, an entry with their port.
"""
import asyncio
import ipaddress
import os
import re
import socket
import time
import unicodedata
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

from benchmarks.errors import ConfigError

ENV_VAR = "EMBPERF_ALLOWED_TARGETS"
DOCS = "docs/security.md"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_ALLOWED = "127.0.0.0/8 ::1 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 fc00::/7"

# (what it is, why it is refused) for ranges refused unless listed explicitly.
_REFUSED_RANGES: tuple[tuple[str, str], ...] = (
    ("169.254.0.0/16", "a link-local address, where cloud metadata services answer"),
    ("fe80::/10", "a link-local address"),
    ("fd00:ec2::254/128", "the cloud metadata service"),
    ("0.0.0.0/8", "the unspecified address, not a server"),
    ("::/128", "the unspecified address, not a server"),
    ("224.0.0.0/4", "a multicast address"),
    ("ff00::/8", "a multicast address"),
    ("255.255.255.255/32", "the broadcast address"),
)
REFUSED_RANGES: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), why) for net, why in _REFUSED_RANGES)
REFUSED_NAMES = {
    "metadata.google.internal": "the cloud metadata service",
    "metadata.goog": "the cloud metadata service",
}
# IPv6 spellings of an IPv4 address that reach that IPv4 address (NAT64 well-known prefix).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_RE = re.compile(r"^(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")
# Numbers the C resolver takes as IPv4 (0x7f000001, 2130706433, 0177.0.0.1, 127.1).
_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$", re.IGNORECASE)


class OutboundRefused(Exception):
    """The policy refuses an address; str() says which, why, and how an operator can allow it."""


@dataclass(frozen=True)
class Rule:
    """One allowlist entry: a network or a host name (a leading '.' for a whole domain), maybe a port."""

    text: str
    network: IPNetwork | None = None
    host: str | None = None
    port: int | None = None

    def _port_ok(self, port: int) -> bool:
        return self.port is None or self.port == port

    def covers_address(self, address: IPAddress, port: int) -> bool:
        if self.host == "*":
            return self._port_ok(port)
        return (self.network is not None and address.version == self.network.version
                and address in self.network and self._port_ok(port))

    def covers_name(self, name: str, port: int) -> bool:
        if self.host is None or not self._port_ok(port):
            return False
        if self.host == "*":
            return True
        return name == self.host or (self.host.startswith(".") and name.endswith(self.host))


@dataclass(frozen=True)
class Service:
    """One of the portal's own services (database, broker, ...), refused as a target."""

    label: str
    host: str
    port: int


def parse_rules(text: str) -> tuple[Rule, ...]:
    """The allowlist entries of `text`; ValueError names the first entry that is not one."""
    rules = []
    for entry in re.split(r"[\s,]+", text.strip()):
        if entry:
            rules.append(_parse_rule(entry))
    return tuple(rules)


def _parse_port(entry: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{entry!r}: the port must be a number from 1 to 65535")
    return int(text)


def _parse_rule(entry: str) -> Rule:
    if entry == "*":
        return Rule(entry, host="*")
    body, port = entry, None
    if body.startswith("["):
        inside, _, rest = body[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{entry!r}: write an IPv6 entry as [address] or [address]:port")
            port = _parse_port(entry, rest[1:])
        body = inside
    elif body.count(":") == 1:
        body, port_text = body.split(":")
        port = _parse_port(entry, port_text)
    if ":" in body or re.fullmatch(r"[0-9./]+", body):
        try:
            network = ipaddress.ip_network(body, strict=False)
        except ValueError:
            raise ValueError(f"{entry!r} is not an address or network (e.g. 10.0.0.0/8, 192.168.1.20, "
                             "[fd00::/8]:8000)") from None
        return Rule(entry, network=_unmapped_network(network), port=port)
    host = body.lower().rstrip(".")
    if not _HOST_RE.match(host):
        raise ValueError(f"{entry!r} is not a host name, address or network")
    return Rule(entry, host=host[1:] if host.startswith("*.") else host, port=port)


def _unmapped_network(network: IPNetwork) -> IPNetwork:
    if network.version == 6 and network.prefixlen >= 96 and network.network_address.ipv4_mapped is not None:
        return ipaddress.ip_network(f"{network.network_address.ipv4_mapped}/{network.prefixlen - 96}")
    return network


def unmapped(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 spelling reaches (::ffff:a.b.c.d, 64:ff9b::a.b.c.d), else the address."""
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.scope_id:
            return ipaddress.IPv6Address(str(address).split("%")[0])
    return address


# Dots a resolver's IDNA step turns into '.' that NFKC leaves alone (the ideographic full stop).
_IDNA_DOTS = re.compile("[\u3002\uff0e\uff61]")


def host_of(name: str) -> str:
    """A URL's host as the policy compares it: NFKC and IDNA normalised (full-width digits and dots
    are the ASCII ones a resolver would use, an international name its xn-- form), lower case, no
    brackets, no trailing dot."""
    name = _IDNA_DOTS.sub(".", unicodedata.normalize("NFKC", name.strip()))
    name = name.strip("[]").lower().rstrip(".")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise OutboundRefused(f"{name!r} is not a valid host name") from None
    return name


def literal_address(host: str) -> IPAddress | None:
    """The address a literal host stands for, in any spelling a resolver accepts
    (127.0.0.1, 0x7f000001, 2130706433, 0177.0.0.1, 127.1, ::ffff:127.0.0.1); None for a name."""
    host = host_of(host)
    try:
        return unmapped(ipaddress.ip_address(host))
    except ValueError:
        pass
    if _LEGACY_IPV4.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            raise OutboundRefused(f"{host} is neither a host name nor an address") from None
    return None


def split_url(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL; ValueError when it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
    return host_of(parts.hostname), parts.port or _DEFAULT_PORTS[parts.scheme]


@dataclass(frozen=True)
class OutboundPolicy:
    """Which addresses the engine may contact. Plain data (picklable), so it travels to load processes.

    allowed: the allowlist (`EMBPERF_ALLOWED_TARGETS`, or the default: loopback and private ranges).
    infrastructure: the portal's own services, refused unless an entry names their port.
    """

    allowed: tuple[Rule, ...] = field(default_factory=lambda: parse_rules(DEFAULT_ALLOWED))
    infrastructure: tuple[Service, ...] = ()

    @classmethod
    def from_setting(cls, text: str | None, infrastructure=()) -> "OutboundPolicy":
        """A policy from the allowlist's text (blank: the default). ValueError names a bad entry."""
        services = tuple(s if isinstance(s, Service) else Service(*s) for s in infrastructure)
        if text is None or not text.strip():
            return cls(infrastructure=services)
        return cls(allowed=parse_rules(text), infrastructure=services)

    @classmethod
    def from_environment(cls, environ=None) -> "OutboundPolicy":
        """The policy of `$EMBPERF_ALLOWED_TARGETS` (the engine's own default, e.g. for the CLI)."""
        environ = os.environ if environ is None else environ
        try:
            return cls.from_setting(environ.get(ENV_VAR))
        except ValueError as exc:
            raise ConfigError(f"{ENV_VAR}: {exc}") from None

    # ---- the check ---------------------------------------------------------------------------

    def check_url(self, url: str) -> None:
        """The check without DNS, for saving a URL: raises OutboundRefused (ValueError for a URL
        that is not http(s)). Host names are resolved and checked again at connect time."""
        host, port = split_url(url)
        self._check_name(host, port)
        address = literal_address(host)
        if address is not None:
            if not _is_plain_ip(host):
                raise OutboundRefused(f"{host} is an unusual spelling of the address {address}: write {address}")
            self.check_address(address, port)
        elif host in _LOOPBACK_NAMES or host.endswith(".localhost"):
            for loopback in (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")):
                self.check_address(loopback, port, name=host)
        else:
            for service in self.infrastructure:
                if host_of(service.host) == host and port == service.port and not self._names_port(host, port):
                    raise self._refusal(f"{host}:{port} is this portal's own {service.label}", explicit=True)

    def resolve(self, host: str, port: int) -> list[str]:
        """Connect-time check: resolve `host` once, check every address, return them (the only
        addresses a connection may then use). Raises OutboundRefused, or OSError when DNS fails."""
        name = host_of(host)
        self._check_name(name, port)
        address = literal_address(name)
        if address is not None:
            addresses = [address]
        else:
            infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
            addresses = []
            for info in infos:
                found = ipaddress.ip_address(str(info[4][0]).split("%")[0])
                if found not in addresses:
                    addresses.append(found)
        for found in addresses:
            self.check_address(unmapped(found), port, name=None if address is not None else name)
        return [str(a) for a in addresses]

    def check_address(self, address, port: int, name: str | None = None) -> None:
        """Raise OutboundRefused unless `address`:`port` (reached through host `name`, if any) is allowed."""
        address = unmapped(ipaddress.ip_address(address) if isinstance(address, str) else address)
        shown = f"{name} ({address})" if name else str(address)
        for network, why in REFUSED_RANGES:
            if address.version == network.version and address in network and not self._lists(address, port, network):
                raise self._refusal(f"{shown} is {why}", explicit=True)
        for service, service_address in self._service_addresses():
            # A service on this host answers on every address of it (a service bound to loopback
            # only does not, but which one is bound where is not known here): refuse them all.
            same = address == service_address or (on_this_host(address) and on_this_host(service_address))
            if same and port == service.port and not self._names_port(name, port, address):
                raise self._refusal(f"{shown} port {port} is this portal's own {service.label}", explicit=True)
        if name is not None and any(rule.covers_name(name, port) for rule in self.allowed):
            return
        if any(rule.covers_address(address, port) for rule in self.allowed):
            return
        raise self._refusal(f"{shown} port {port} is not among the allowed targets")

    # ---- helpers -----------------------------------------------------------------------------

    def _check_name(self, name: str, port: int) -> None:
        why = REFUSED_NAMES.get(name)
        if why and not any(rule.host == name and rule._port_ok(port) for rule in self.allowed):
            raise self._refusal(f"{name} is {why}", explicit=True)

    def _lists(self, address: IPAddress, port: int, refused: IPNetwork) -> bool:
        # Only an entry inside the refused range itself opens it: "*" or 0.0.0.0/0 never do.
        return any(rule.network is not None and rule.network.version == refused.version
                   and rule.network.subnet_of(refused) and rule.covers_address(address, port)
                   for rule in self.allowed)

    def _names_port(self, name: str | None, port: int, address: IPAddress | None = None) -> bool:
        # A portal service opens only to an entry that names its port.
        return any(rule.port == port and ((name is not None and rule.covers_name(name, port))
                                          or (address is not None and rule.covers_address(address, port)))
                   for rule in self.allowed)

    def _service_addresses(self) -> list[tuple[Service, IPAddress]]:
        found = []
        for service in self.infrastructure:
            host = host_of(service.host)
            try:
                address = literal_address(host)
            except OutboundRefused:
                continue
            if address is not None:
                found.append((service, address))
            elif host in _LOOPBACK_NAMES:
                found.append((service, ipaddress.ip_address("127.0.0.1")))
            else:
                found.extend((service, a) for a in _service_lookup(host, service.port))
        return found

    def _refusal(self, what: str, explicit: bool = False) -> OutboundRefused:
        how = ("an operator can allow it only by listing it explicitly in" if explicit
               else "an operator can allow it in")
        return OutboundRefused(f"refused by the outbound policy: {what}; {how} {ENV_VAR} ({DOCS})")


_SERVICE_TTL_S = 300.0
_service_cache: dict[tuple[str, int], tuple[float, list[IPAddress]]] = {}


def _service_lookup(host: str, port: int) -> list[IPAddress]:
    # Cached: the socket factory checks every new connection on the event loop's thread.
    now = time.monotonic()
    cached = _service_cache.get((host, port))
    if cached is not None and cached[0] > now:
        return cached[1]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        infos = []  # a service this host cannot resolve is one it cannot reach either
    addresses = [unmapped(ipaddress.ip_address(str(info[4][0]).split("%")[0])) for info in infos]
    _service_cache[(host, port)] = (now + _SERVICE_TTL_S, addresses)
    return addresses


_host_cache: list = [0.0, frozenset()]


def host_addresses() -> frozenset[IPAddress]:
    """Every address of this host: each interface's, and what its host name resolves to (cached)."""
    now = time.monotonic()
    if _host_cache[0] > now:
        return _host_cache[1]
    found: set[IPAddress] = set()
    try:
        import psutil

        for entries in psutil.net_if_addrs().values():
            for entry in entries:
                if entry.family in (socket.AF_INET, socket.AF_INET6):
                    try:
                        found.add(unmapped(ipaddress.ip_address(entry.address.split("%")[0])))
                    except ValueError:
                        pass
    except (ImportError, OSError):
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM):
            found.add(unmapped(ipaddress.ip_address(str(info[4][0]).split("%")[0])))
    except (OSError, ValueError):
        pass
    _host_cache[:] = [now + _SERVICE_TTL_S, frozenset(found)]
    return _host_cache[1]


def on_this_host(address: IPAddress) -> bool:
    """True for an address that reaches this host: loopback, unspecified, or one of its own."""
    return address.is_loopback or address.is_unspecified or address in host_addresses()


def _is_plain_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# ---- aiohttp: connections pinned to checked addresses ----------------------------------------------


def connector(policy: OutboundPolicy, **kwargs) -> aiohttp.TCPConnector:
    """An aiohttp TCPConnector that resolves each host once through the policy and connects only
    to the addresses it checked (keyword arguments go to TCPConnector)."""
    guard = _Guard(policy)
    return aiohttp.TCPConnector(resolver=PinnedResolver(guard), socket_factory=guard.socket, **kwargs)


class _Guard:
    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy
        self.approved: set[tuple[str, int]] = set()

    def socket(self, addr_info) -> socket.socket:
        """aiohttp's socket factory: the last gate before a socket exists for an address."""
        family, type_, proto, _, sockaddr = addr_info
        address, port = str(sockaddr[0]).split("%")[0], int(sockaddr[1])
        if (address, port) not in self.approved:
            # Not from our resolver: aiohttp connects to a literal address without resolving it.
            self.policy.check_address(address, port)
        return socket.socket(family=family, type=type_, proto=proto)


class PinnedResolver(AbstractResolver):
    """Resolves through the policy; its answers are the checked addresses and nothing else."""

    def __init__(self, guard: _Guard) -> None:
        self.guard = guard

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_UNSPEC) -> list[dict]:
        loop = asyncio.get_running_loop()
        addresses = await loop.run_in_executor(None, self.guard.policy.resolve, host, port)
        results = []
        for address in addresses:
            found_family = socket.AF_INET6 if ":" in address else socket.AF_INET
            if family not in (socket.AF_UNSPEC, found_family):
                continue
            self.guard.approved.add((address, port))
            results.append({"hostname": host, "host": address, "port": port, "family": found_family,
                            "proto": 0, "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV})
        if not results:
            raise OSError(f"{host} has no address of the family asked for")
        return results

    async def close(self) -> None:
        """Nothing to release: lookups run on the loop's default executor."""
