"""Shared pieces of the API tests: a DRF client signed in with a fresh API token."""
from rest_framework.test import APIClient


def token_client(user, **kwargs) -> APIClient:
    """An APIClient that sends `Authorization: Bearer <new token of user>`."""
    from portal.accounts.models import ApiToken

    _, raw = ApiToken.issue(user, "tests", **kwargs)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    client.raw_token = raw
    return client


def document(**overrides) -> dict:
    """A valid embperf.run/1 document with two closed-loop levels."""
    from tests.factories import level_docs

    doc = {
        "schema": "embperf.run/1",
        "run": {"id": None, "uuid": None, "label": "from-cli", "notes": "", "server_config": {"--max-batch": "64"},
                "status": "succeeded", "status_reason": "", "started_at": "2025-03-01T10:00:00+00:00",
                "finished_at": "2025-03-01T10:05:00+00:00"},
        "target": {"name": "sim", "flavor": "openai", "base_urls": ["http://127.0.0.1:9100/v1"], "model": "sim-embed",
                   "engine": "simulator", "engine_version": "1", "launch_config": {}, "gpus": [], "metrics_urls": []},
        "plan": {"name": "smoke", "mode": "closed", "levels": [1, 4], "warmup_s": 0.5, "duration_s": 2, "tokens": 32,
                 "batch": 1, "dimensions": 64, "encoding": "float", "timeout_s": 5, "input": "unique",
                 "keep_samples": False},
        "probe": {"served_model": "sim-embed", "vector_length": 64, "prompt_tokens": 32, "latency_ms": 3.1},
        "client": {"version": "0.1.0", "host": "ci-runner", "python": "3.11"},
        "telemetry_notes": [],
        "levels": level_docs((1, 4), duration_s=3),
        "summary": {"peak_qps": 100.0, "peak_level": 4, "knee_level": None, "slo_p99_ms": None,
                    "slo_max_level": None},
    }
    doc.update(overrides)
    return doc
