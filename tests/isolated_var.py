"""A pytest plugin loaded before Django's settings (`-p tests.isolated_var` in pyproject.toml): the tests
get a data folder of their own, so they never touch the checkout's var/ (database, broker, secret key,
unsaved results). conftest.py would be too late: pytest-django reads the settings before loading it."""
import os
import tempfile

os.environ.setdefault("EMBPERF_VAR_DIR", tempfile.mkdtemp(prefix="embperf-test-var-"))
