"""Vectors asked for with fewer dimensions: a server that ignores 'dimensions', or cuts unit vectors
without re-normalising them, is named, never passed. Deterministic: the simulator's vectors are fixed
by the text, and the checks read the answers, not the clock."""
import numpy as np
import pytest

from benchmarks.errors import SweepError
from benchmarks.flavors import NORM_TOLERANCE, make_flavor
from benchmarks.simulator import running_simulator, text_vector
from benchmarks.sweep import run_sweep

FIXED = {"batch_ms": 0, "token_us": 0, "batch_wait_ms": 0, "delay_ms": 2}


def target(sim):
    return {"name": "sim", "flavor": "openai", "base_urls": [sim.base_url], "model": "sim-embed"}


def plan(**overrides):
    base = {"levels": [1], "warmup_s": 0.1, "duration_s": 0.5, "tokens": 16, "dimensions": 64,
            "timeout_s": 5, "abort_error_rate": 1.0, "seed": 1}
    base.update(overrides)
    return base


def test_truncations_of_unit_vectors_pass_the_norm_check():
    with running_simulator(native_dimensions=256, **FIXED) as sim:
        doc = run_sweep(target(sim), plan())
    level = doc["levels"][0]
    assert doc["probe"]["full_length_norm"] == pytest.approx(1, abs=NORM_TOLERANCE)
    assert level["requests_ok"] > 0 and level["requests_failed"] == 0


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_unnormalised_truncation_is_named(encoding):
    with running_simulator(native_dimensions=256, unnormalised_truncation=True, **FIXED) as sim:
        doc = run_sweep(target(sim), plan(encoding=encoding))
    level = doc["levels"][0]
    assert level["requests_ok"] == 0 and level["requests_failed"] > 0
    message = level["error_examples"]["invalid_response"]
    assert "without re-normalising" in message and "64 dimensions" in message


def test_a_server_that_ignores_dimensions_is_named():
    with running_simulator(native_dimensions=256, ignore_dimensions=True, **FIXED) as sim:
        with pytest.raises(SweepError, match=r"256 values where 64 dimensions were asked for: the server "
                                             r"ignores 'dimensions'"):
            run_sweep(target(sim), plan())


def test_norm_check_only_where_the_full_length_vector_is_a_unit_vector():
    cut = text_vector("a text", 64, 256, renormalise=False)
    assert np.linalg.norm(cut) < 1 - NORM_TOLERANCE  # the simulator's mode really is caught by the check
    body = ('{"data": [{"embedding": %s}]}' % [float(x) for x in cut]).encode()
    flavor = make_flavor("openai", "m", dimensions=64)
    flavor.validate(body, 1, 64)  # no promise of unit vectors: the answer passes
    flavor.unit_norm = True
    with pytest.raises(Exception, match="norm 0"):
        flavor.validate(body, 1, 64)
