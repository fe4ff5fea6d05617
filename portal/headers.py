"""Response headers every page carries: the Content-Security-Policy (docs/security.md).

Every page loads only the portal's own scripts, styles and images (Chart.js comes from npm and is
served as a static file; the API docs use drf-spectacular's split view, whose start-up script is a
file too), so the policy allows nothing else: no inline script or style, no other origin, no
plug-ins, no framing, forms posting only here. The API docs page alone also allows inline styles and
data: images, which Swagger UI draws with (`with_policy`).
"""
from functools import wraps

from django.conf import settings

HEADER = "Content-Security-Policy"
# Swagger UI (the API docs) applies inline styles and draws its icons from data: images; its scripts
# still come from this site only.
API_DOCS_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                   "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")


def with_policy(policy: str):
    """A view decorator: this view's pages carry `policy` instead of EMBPERF_CSP (when that is on)."""
    def decorate(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            response = view(request, *args, **kwargs)
            if settings.EMBPERF_CSP:
                response[HEADER] = policy
            return response
        return wrapped
    return decorate


class ContentSecurityPolicyMiddleware:
    """Adds EMBPERF_CSP as the Content-Security-Policy of every response that sets none of its own."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.policy = settings.EMBPERF_CSP

    def __call__(self, request):
        response = self.get_response(request)
        if self.policy and HEADER not in response:
            response[HEADER] = self.policy
        return response
