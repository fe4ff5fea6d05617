"""System checks of the outbound policy (`manage.py check --deploy`)."""
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
