"""The engine's outbound policy as this installation sets it (docs/security.md).

The engine (benchmarks/outbound.py) knows nothing of Django: the allowlist comes from the setting
EMBPERF_ALLOWED_TARGETS, and the portal's own services (database, broker, result backend, cache)
are read here from the settings and handed to it as plain host:port data. The forms, the API and
ingest check URLs with it when they are saved; the worker passes it to the engine, which checks
again at every connection.
"""
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

from benchmarks.outbound import OutboundPolicy, OutboundRefused, Service

# Default ports of the services a Django/Celery deployment talks to, by URL scheme or engine name.
_DEFAULT_PORTS = {
    "postgres": 5432, "postgresql": 5432, "postgis": 5432, "pgsql": 5432,
    "mysql": 3306, "mysql2": 3306, "mysqlgis": 3306, "mariadb": 3306,
    "oracle": 1521, "mssql": 1433,
    "redis": 6379, "rediss": 6379, "valkey": 6379, "sentinel": 26379,
    "amqp": 5672, "pyamqp": 5672, "librabbitmq": 5672, "amqps": 5671,
    "memcache": 11211, "memcached": 11211, "pymemcache": 11211,
    "mongodb": 27017, "sqs": None, "filesystem": None, "memory": None, "rpc": None,
    "django-db": None, "cache": None, "sqlite": None, "file": None,
}


def _engine_port(engine: str) -> int | None:
    for name, port in _DEFAULT_PORTS.items():
        if port and name in engine.lower():
            return port
    return None


def _from_url(label: str, url: str) -> list[Service]:
    """Services named by a broker, backend or cache URL (several may be joined with ';')."""
    found = []
    for part in str(url or "").split(";"):
        part = part.strip()
        if "://" not in part:
            if part and ":" in part and not part.startswith(("unix:", "/")):
                host, _, port = part.rpartition(":")  # memcached style "host:port"
                if port.isdigit():
                    found.append(Service(label, host, int(port)))
            continue
        scheme = part.split("://", 1)[0].lower().removeprefix("db+").split("+")[0]
        try:
            parts = urlsplit(part)
            host, port = parts.hostname, parts.port
        except ValueError:
            continue
        port = port or _DEFAULT_PORTS.get(scheme)
        if host and port:
            found.append(Service(label, host, port))
    return found


def infrastructure() -> list[Service]:
    """The portal's own services, from the settings: never a benchmark target."""
    services = []
    for alias, database in (getattr(settings, "DATABASES", None) or {}).items():
        host = database.get("HOST") or ""
        if not host or host.startswith("/"):
            continue  # SQLite, or a Unix socket: nothing reachable over TCP
        port = database.get("PORT")
        port = int(port) if str(port or "").isdigit() else _engine_port(database.get("ENGINE", ""))
        if port:
            services.append(Service(f"database ({alias})" if alias != "default" else "database", host, port))
    broker = getattr(settings, "CELERY_BROKER_URL", "")
    services += _from_url("task broker", broker)
    backend = getattr(settings, "CELERY_RESULT_BACKEND", None) or ""
    services += _from_url("result backend", broker if str(backend).startswith("rpc") else backend)
    for cache in (getattr(settings, "CACHES", None) or {}).values():
        locations = cache.get("LOCATION") or []
        for location in [locations] if isinstance(locations, str) else locations:
            services += _from_url("cache", location)
    return services


def outbound_policy() -> OutboundPolicy:
    """The policy of this installation: the allowlist setting plus the portal's own services."""
    return OutboundPolicy.from_setting(settings.EMBPERF_ALLOWED_TARGETS, infrastructure=infrastructure())


def validate_outbound_url(url: str, policy: OutboundPolicy | None = None) -> None:
    """Raise ValidationError when the outbound policy refuses `url` (checked without DNS here; the
    worker resolves host names and checks them again when it connects)."""
    try:
        (policy or outbound_policy()).check_url(url)
    except (OutboundRefused, ValueError) as exc:
        raise ValidationError(f"“{url}”: {exc}") from None
