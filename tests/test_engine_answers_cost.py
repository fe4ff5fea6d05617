"""Where the time goes: response bytes per request and the client's CPU time to decode and check an
answer, float against base64. Deterministic: bytes follow from the vector length, and decode time is
the load process's own CPU time (time.thread_time), which a busy machine does not stretch; the float
answer parses 8,192 numbers per text where base64 decodes one string."""
import math

import pytest

from benchmarks.document import DECODE_SHARE_NOTE, decode_note
from benchmarks.simulator import running_simulator
from benchmarks.sweep import run_sweep

DIMS = 8192
BATCH = 4
FIXED = {"batch_ms": 0, "token_us": 0, "batch_wait_ms": 0, "delay_ms": 1, "native_dimensions": DIMS}


def level_for(encoding):
    with running_simulator(**FIXED) as sim:
        target = {"name": "sim", "flavor": "openai", "base_urls": [sim.base_url], "model": "sim-embed"}
        plan = {"levels": [1], "warmup_s": 0.1, "duration_s": 1.0, "tokens": 16, "batch": BATCH,
                "encoding": encoding, "timeout_s": 10, "abort_error_rate": 1.0, "seed": 1}
        return run_sweep(target, plan)["levels"][0]


def test_float_and_base64_answers_cost_what_their_encoding_says():
    as_float, as_base64 = level_for("float"), level_for("base64")
    assert as_float["requests_ok"] > 0 and as_base64["requests_ok"] > 0
    # base64 of DIMS float32 values (4 * DIMS bytes) is 4 * ceil(4 * DIMS / 3) characters per text; the JSON around
    # the vectors (model, usage, indices, keys) adds less than 100 bytes per text and 200 per answer.
    base64_vector = 4 * math.ceil(4 * DIMS / 3)
    assert BATCH * base64_vector <= as_base64["answers"]["bytes_mean"] <= BATCH * (base64_vector + 100) + 200
    # A float32 written in JSON as the shortest double that reads back takes 8 to 24 characters (digits,
    # sign, exponent) plus a comma.
    per_value = (as_float["answers"]["bytes_mean"] - 200) / (BATCH * DIMS)
    assert 8 <= per_value <= 25
    ratio = as_float["answers"]["bytes_mean"] / as_base64["answers"]["bytes_mean"]
    assert ratio == pytest.approx(per_value / (16 / 3), rel=0.05)  # base64: 16/3 characters per value
    # Parsing 8,192 numbers per text costs about twice the CPU of decoding one base64 string of the same
    # values (measured: 1.4 ms against 0.7 ms per answer of 4 texts); the margin is CPU time, not wall time.
    assert as_float["answers"]["decode_ms_mean"] > 1.3 * as_base64["answers"]["decode_ms_mean"] > 0
    for level in (as_float, as_base64):
        answers = level["answers"]
        assert answers["decode_share"] == pytest.approx(answers["decode_ms_mean"] / level["latency_ms"]["mean"],
                                                        rel=0.01, abs=1e-4)
        # The figures say which dominated: the note appears exactly when decoding took the larger share.
        dominated = answers["decode_share"] > DECODE_SHARE_NOTE
        assert any("client's decoding, not the server, dominated" in n for n in level["notes"]) == dominated
    assert as_float["answers"]["decode_share"] > as_base64["answers"]["decode_share"]


def test_decode_note_names_a_decode_bound_level():
    level = {"answers": {"bytes_mean": 1e6, "decode_ms_mean": 4.0, "decode_share": 0.4}}
    assert "40 % of the mean latency" in decode_note(level) or "40% of the mean latency" in decode_note(level)
    level["answers"]["decode_share"] = DECODE_SHARE_NOTE
    assert decode_note(level) is None
    assert decode_note({"answers": {"bytes_mean": None, "decode_ms_mean": None, "decode_share": None}}) is None
