"""Schemathesis against /api/schema/, in-process through the WSGI app: no request may cause a 5xx."""
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.api_support import token_client
from tests.factories import level_docs, stored_run

pytestmark = pytest.mark.usefixtures("fresh_throttles")

# Bounded so the whole file runs in well under a minute on a small machine.
MAX_EXAMPLES = 12


@pytest.fixture
def auth_headers(owner, target, plan):
    # Something for the generated ids to find: a finished run of the owner's team with raw samples.
    from portal.sweeps.samples import writer_for_run

    run = stored_run(target=target, plan=plan, docs=level_docs((1, 4), duration_s=3))
    writer_for_run(run)(0, [(0.0, 0.0, 0.01, "ok", 200, 8, 1, 100)])
    return {"Authorization": f"Bearer {token_client(owner).raw_token}"}


def _load_schema():
    # pytest-django has configured Django before collection; serving the schema touches no database.
    from django.core.wsgi import get_wsgi_application

    return schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


schema = _load_schema()


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, auth_headers):
    case.call_and_validate(headers=auth_headers, checks=[not_a_server_error])
