"""System checks of the outbound policy and the throttles' cache (`manage.py check --deploy`)."""
import os

from django.conf import settings
from django.core.checks import Tags, Warning, register

from benchmarks.outbound import DEFAULT_ALLOWED


@register(Tags.security, deploy=True)
def allowlist_is_set(app_configs, **kwargs):
    """In production the engine's allowlist should name the servers a team may benchmark."""
    if settings.DEBUG or (settings.EMBPERF_ALLOWED_TARGETS or "").strip():
        return []
    return [Warning(
        "EMBPERF_ALLOWED_TARGETS is not set, so the workers may send requests to any loopback or private "
        f"address ({DEFAULT_ALLOWED}), including services on the workers' own hosts and network.",
        hint="Set EMBPERF_ALLOWED_TARGETS to the networks or hosts of your embedding servers, e.g. "
             "'10.20.0.0/16, *.gpu.example.com' (docs/security.md).",
        id="embperf.W001",
    )]


# Django's caches that live in one process: each web process keeps its own throttle counts in them.
PER_PROCESS_CACHES = ("django.core.cache.backends.locmem.LocMemCache", "django.core.cache.backends.dummy.DummyCache")


@register(Tags.caches, deploy=True)
def throttles_are_shared(app_configs, **kwargs):
    """Several web processes must count throttles in one cache, or each allows the whole rate."""
    backend = (settings.CACHES.get("default") or {}).get("BACKEND", "")
    processes = os.environ.get("WEB_CONCURRENCY", "").strip()  # gunicorn's own setting for -w
    if settings.DEBUG or backend not in PER_PROCESS_CACHES or processes == "1":
        return []
    return [Warning(
        "The cache is per process, so each web process (gunicorn -w; WEB_CONCURRENCY) keeps its own throttle "
        "counts: with N processes a rate such as EMBPERF_PROBE_RATE allows N times as many requests.",
        hint="Set EMBPERF_CACHE_URL to a Redis all web processes share, e.g. redis://127.0.0.1:6379/1 "
             "(docs/production.env), or run one web process (WEB_CONCURRENCY=1).",
        id="embperf.W002",
    )]
