"""A shape axis: one request-shape field (tokens, batch, encoding, dimensions) swept across the load
levels, a grid run shape by shape, against the simulator, whose batch costs batch_ms + token_us × the
tokens in it (tests/test_engine_capacity.py). Closed loop at concurrency 1 a request is a batch of its
own: its latency is batch_ms + token_us × its tokens, plus the client's own time, which a busy host
stretches; differences between shapes cancel what every request pays alike."""
import math

import pytest

from benchmarks import cli
from benchmarks.document import DECODE_SHARE_NOTE, summarize
from benchmarks.errors import SweepError
from benchmarks.plan import PlanLimits, normalize_plan, plan_cells, plan_errors, planned_seconds, worst_case_bytes
from benchmarks.simulator import running_simulator
from benchmarks.sweep import run_sweep
from tests.test_engine_sweep import assert_portal_accepts
from tests.test_engine_tokens import wordpiece


def target(sim, **extra):
    return {"name": "sim", "flavor": "openai", "base_urls": [sim.base_url], "model": "sim-embed", **extra}


def errors_of(**fields) -> dict:
    return plan_errors({"levels": [1, 4], **fields})[1]


# ---- the plan rule ---------------------------------------------------------------------------

def test_no_shape_axis_is_the_default_and_leaves_the_plan_as_it_was():
    checked = normalize_plan({"levels": [1, 4]})
    assert checked["shape_field"] is None and checked["shape_values"] is None
    assert plan_cells(checked) == [{"index": 0, "shape": None, "load": 1}, {"index": 1, "shape": None, "load": 4}]


def test_shape_values_are_checked_against_their_fields_own_bounds():
    assert errors_of(shape_field="tokens", shape_values=[32, 40_000]) == {
        "shape_values": ["Tokens per text may be at most 32768; 40000 is too high."]}
    assert errors_of(shape_field="batch", shape_values=[1, 2.5]) == {
        "shape_values": ["Texts per request must be a whole number, not 2.5."]}
    assert errors_of(shape_field="dimensions", shape_values=[64, 20_000]) == {
        "shape_values": ["Dimensions may be at most 16384 on this installation (EMBPERF_MAX_VECTOR_LENGTH); "
                         "20000 is too high."]}
    assert errors_of(shape_field="encoding", shape_values=["float", "binary"]) == {
        "shape_values": ["Encoding values are float or base64; 'binary' is not one."]}
    assert errors_of(shape_field="tokens", shape_values=[32, 64, 32]) == {
        "shape_values": ["Shape value 32 appears twice; each value of the tokens axis must be different."]}
    assert errors_of(shape_field="batch", shape_values=[8]) == {
        "shape_values": ["A shape axis has 2 to 16 values; 1 was given. One value is a plain plan: set batch "
                         "instead."]}
    assert "2 to 16 values; 17 were given" in errors_of(shape_field="tokens",
                                                         shape_values=list(range(1, 18)))["shape_values"][0]
    assert errors_of(shape_field="batch") == {
        "shape_values": ["A shape axis on batch needs its values: give 2 to 16 different values, e.g. 1, 8, 32."]}
    assert errors_of(shape_values=[1, 2]) == {
        "shape_values": ["Shape values need a shape field: choose the field they set (tokens, batch, encoding, "
                         "dimensions), or leave shape_values empty."]}
    assert errors_of(shape_field="size", shape_values=[1, 2]) == {
        "shape_field": ["A shape axis sweeps one of tokens, batch, encoding, dimensions; 'size' is not one of them."]}
    # Values may come as the text a person types; they are stored as numbers.
    typed = normalize_plan({"levels": [1], "shape_field": "tokens", "shape_values": "32, 128"})
    assert typed["shape_values"] == [32, 128]


def test_a_shape_axis_is_refused_where_it_cannot_mean_anything():
    assert errors_of(search="capacity", slo_p99_ms=100, shape_field="batch", shape_values=[1, 8]) == {
        "shape_field": ["A capacity search chooses its loads itself, so it cannot also sweep a shape across them: "
                        "run one capacity plan per shape (set batch to each value in turn), or choose the levels "
                        "search."]}
    assert errors_of(length="lognormal", shape_field="tokens", shape_values=[32, 128]) == {
        "shape_field": ["A tokens axis sets the fixed length of each cell, so it needs length fixed; this plan's "
                        "length is lognormal: choose length fixed, or sweep another field."]}
    # Another field may be swept over a length distribution.
    assert errors_of(length="lognormal", shape_field="batch", shape_values=[1, 8]) == {}
    assert "a corpus is sent as it is" in errors_of(input="corpus", corpus=["a text"], shape_field="tokens",
                                                    shape_values=[32, 128])["shape_field"][0]


def test_the_grid_counts_against_the_installations_limits():
    limits = PlanLimits(max_levels=8)
    _, errors = plan_errors({"levels": [1, 2, 4], "shape_field": "tokens", "shape_values": [32, 128, 512]}, limits)
    assert errors == {"shape_values": ["3 shapes × 3 levels = 9 cells, above this installation's limit of 8 levels "
                                       "per plan (EMBPERF_MAX_LEVELS); use fewer shapes or levels."]}
    plan = normalize_plan({"levels": [1, 2], "warmup_s": 1, "duration_s": 10, "timeout_s": 5,
                           "shape_field": "batch", "shape_values": [1, 8, 32]})
    assert planned_seconds(plan) == 6 * 16
    assert [(c["index"], c["shape"]["value"], c["load"]) for c in plan_cells(plan)] == [
        (0, 1, 1), (1, 1, 2), (2, 8, 1), (3, 8, 2), (4, 32, 1), (5, 32, 2)]
    _, errors = plan_errors({"levels": [1], "warmup_s": 1, "duration_s": 100, "shape_field": "batch",
                             "shape_values": [1, 2, 4]}, PlanLimits(max_run_seconds=300))
    assert errors["levels"][0].startswith("This plan may take up to 393 s (3 cells × (warm-up + duration + timeout))")
    # The worker-memory check takes the largest shape: the plan's own tokens, batch or dimensions do not hide it.
    for field, values, plain in (("tokens", [32, 8192], {"tokens": 8192}), ("batch", [1, 64], {"batch": 64}),
                                 ("dimensions", [64, 4096], {"dimensions": 4096})):
        shaped = normalize_plan({"levels": [16], "shape_field": field, "shape_values": values})
        assert worst_case_bytes(shaped, PlanLimits()) == worst_case_bytes(normalize_plan({"levels": [16], **plain}),
                                                                          PlanLimits())
    _, errors = plan_errors({"levels": [64], "shape_field": "batch", "shape_values": [1, 512]},
                            PlanLimits(max_worker_memory_mib=1024))
    assert "at its largest shape, batch 512" in errors["levels"][0]


# ---- tokens: what the per-token cost predicts ----------------------------------------------------

BATCH_MS = 5.0
TOKEN_US = 50.0  # 0.05 ms per token: 1.6 ms for 32 tokens, 102 ms for 2,048
TOKEN_SERVER = {"batch_ms": BATCH_MS, "token_us": TOKEN_US, "batch_wait_ms": 0, "delay_ms": 0,
                "max_batch_tokens": 1_000_000, "native_dimensions": 32}


def test_a_tokens_axis_moves_latency_and_tokens_per_s_as_the_per_token_cost_predicts():
    tokens = [32, 256, 2048]
    with running_simulator(**TOKEN_SERVER) as sim:
        doc = run_sweep(target(sim), {"levels": [1, 4], "warmup_s": 0.3, "duration_s": 1.5, "tokens": 16,
                                      "shape_field": "tokens", "shape_values": tokens, "timeout_s": 10,
                                      "abort_error_rate": 1.0, "seed": 1})
        assert sim.stats.duplicate_texts == 0  # each shape's texts are new ones
    levels = doc["levels"]
    assert [(lv["index"], lv["shape"]["value"], lv["concurrency"]) for lv in levels] == [
        (0, 32, 1), (1, 32, 4), (2, 256, 1), (3, 256, 4), (4, 2048, 1), (5, 2048, 4)]
    # Each shape was calibrated to its own length: the server counted about that many tokens per text.
    calibrated = {s["value"]: s["calibration"]["target_tokens"] for s in doc["inputs"]["shapes"]}
    assert calibrated == {32: 32, 256: 256, 2048: 2048}
    for level in levels:
        assert level["tokens_per_text"]["mean"] == pytest.approx(level["shape"]["value"], rel=0.1)
        assert level["requests_ok"] > 0 and level["error_rate"] == 0
    alone = {lv["shape"]["value"]: lv for lv in levels if lv["concurrency"] == 1}
    four = {lv["shape"]["value"]: lv for lv in levels if lv["concurrency"] == 4}

    def predicted_ms(level, in_batch=1):
        return BATCH_MS + TOKEN_US / 1000 * in_batch * level["tokens_per_text"]["mean"]

    for n in tokens:
        level = alone[n]
        # Concurrency 1: the server sleeps the batch's cost, so the latency is never below it; the client's own
        # time per request (sending, reading, a busy host's scheduling) comes on top: allow 60 % and 5 ms.
        assert predicted_ms(level) * 0.97 <= level["latency_ms"]["mean"] <= predicted_ms(level) * 1.6 + 5, level
        # One request at a time: tokens/s is the tokens of one request over its latency. The window counts whole
        # requests (at 2,048 tokens about 14 of them in 1.5 s, so ±1 is 7 %) and the client pauses between
        # them: within 20 %.
        expected = level["tokens_per_text"]["mean"] / (level["latency_ms"]["mean"] / 1000)
        assert level["tokens_per_s"] == pytest.approx(expected, rel=0.2), level
    # The cost of a token, from the difference between two shapes: what every request pays alike cancels.
    # 1,792 tokens more cost 89.6 ms more; a busy host adds to each latency unevenly: within 25 %.
    slope_us = 1000 * (alone[2048]["latency_ms"]["mean"] - alone[256]["latency_ms"]["mean"]) / (
        alone[2048]["tokens_per_text"]["mean"] - alone[256]["tokens_per_text"]["mean"])
    assert slope_us == pytest.approx(TOKEN_US, rel=0.25)
    # The fixed cost of a batch weighs less on longer texts: tokens/s grows with the length, at concurrency 1
    # from 32 / 6.6 ms = 4,800 to 2,048 / 107 ms = 19,000 tokens/s (the predictions differ by 3 and 1.3 times).
    assert alone[32]["tokens_per_s"] * 2 < alone[256]["tokens_per_s"] < alone[2048]["tokens_per_s"]
    # Latency follows the length by the same cost: the ratio of 2,048 to 256 tokens is 107 / 17.8 = 6.0; the
    # client's time adds to both, so the measured ratio is lower, never higher (10 % for rounding).
    ratio = alone[2048]["latency_ms"]["mean"] / alone[256]["latency_ms"]["mean"]
    assert 0.6 * predicted_ms(alone[2048]) / predicted_ms(alone[256]) <= ratio
    assert ratio <= 1.1 * predicted_ms(alone[2048]) / predicted_ms(alone[256])
    # Concurrency 4 keeps the server busy: each request waits for the others' tokens too (Little's law: the
    # latency is 4 / the server's rate), so at 256 and 2,048 tokens, where a batch's fixed cost is small, the
    # latency is 3 to 4.5 times that of a request alone (4 × its work, plus one to four batch costs).
    for n in (256, 2048):
        assert 3 * predicted_ms(alone[n]) <= four[n]["latency_ms"]["mean"] <= 4.5 * predicted_ms(alone[n]) + 10
    # And no level went faster than the server's one token per 50 µs (20,000 tokens/s) allows, give or take the
    # whole batches of four a short window counts (at 2,048 tokens a batch of 4 is 0.41 s of a 1.5 s window).
    for level in levels:
        assert level["tokens_per_s"] <= 1e6 / TOKEN_US * (1 + 4 * 0.41 / 1.5)
    shapes = doc["summary"]["shapes"]
    assert [s["value"] for s in shapes] == tokens
    for shape in shapes:
        peak = max((lv for lv in levels if lv["shape"]["value"] == shape["value"]), key=lambda lv: lv["qps"])
        assert shape["peak_qps"] == peak["qps"] and shape["peak_level"] == peak["concurrency"]
        assert shape["peak_tokens_per_s"] == peak["tokens_per_s"]
        assert shape["p99_ms_at_peak"] == peak["latency_ms"]["p99"]
    # The run-wide figures stay over every cell.
    assert doc["summary"]["peak_qps"] == max(lv["qps"] for lv in levels)
    assert_portal_accepts(doc)


def test_a_tokens_axis_with_a_tokenizer_cuts_each_shapes_texts_to_its_count(tmp_path):
    path = tmp_path / "tokenizer.json"
    wordpiece().save(str(path))
    fast = {"batch_ms": 0, "token_us": 0, "batch_wait_ms": 0, "delay_ms": 2, "native_dimensions": 16}
    with running_simulator(**fast) as sim:
        doc = run_sweep(target(sim, tokenizer=str(path)),
                        {"levels": [2], "warmup_s": 0.1, "duration_s": 0.5, "shape_field": "tokens",
                         "shape_values": [24, 96], "timeout_s": 5, "abort_error_rate": 1.0, "seed": 2})
    by_value = {s["value"]: s["calibration"] for s in doc["inputs"]["shapes"]}
    for value, calibration in by_value.items():
        assert calibration["target_tokens"] == value
        counted = calibration["tokenizer_tokens"]
        assert value - 1 <= counted["min"] <= counted["max"] <= value + 1
    assert [lv["tokens_source"] for lv in doc["levels"]] == ["tokenizer", "tokenizer"]
    assert [lv["tokens_per_text"]["mean"] for lv in doc["levels"]] == [pytest.approx(24, abs=1.5),
                                                                        pytest.approx(96, abs=1.5)]


# ---- encoding: where the time goes ----------------------------------------------------------

DIMS = 8192
BATCH = 4


def test_an_encoding_axis_shows_the_bytes_and_the_decoding_of_each_encoding():
    with running_simulator(batch_ms=0, token_us=0, batch_wait_ms=0, delay_ms=1, native_dimensions=DIMS) as sim:
        doc = run_sweep(target(sim), {"levels": [1], "warmup_s": 0.2, "duration_s": 1.0, "tokens": 16,
                                      "batch": BATCH, "shape_field": "encoding", "shape_values": ["float", "base64"],
                                      "timeout_s": 10, "abort_error_rate": 1.0, "seed": 1})
    as_float, as_base64 = doc["levels"]
    assert (as_float["shape"], as_base64["shape"]) == ({"field": "encoding", "value": "float"},
                                                       {"field": "encoding", "value": "base64"})
    assert as_float["requests_ok"] > 0 and as_base64["requests_ok"] > 0
    # base64 of DIMS float32 values (4 × DIMS bytes) is 4 × ceil(4 × DIMS / 3) characters per text, 16/3 per value;
    # the JSON around the vectors adds less than 100 bytes per text and 200 per answer.
    base64_vector = 4 * math.ceil(4 * DIMS / 3)
    assert BATCH * base64_vector <= as_base64["answers"]["bytes_mean"] <= BATCH * (base64_vector + 100) + 200
    # A float32 written in JSON as the shortest double that reads back takes 8 to 24 characters plus a comma,
    # so a float answer is at least 9 / (16 / 3) = 1.7 times the base64 one (about 3.7 times in practice).
    assert as_float["answers"]["bytes_mean"] >= 1.6 * as_base64["answers"]["bytes_mean"]
    # Parsing 8,192 numbers per text costs more CPU than decoding one base64 string of the same values
    # (about twice; CPU time of the load process, which a busy host does not stretch).
    assert as_float["answers"]["decode_ms_mean"] > 1.3 * as_base64["answers"]["decode_ms_mean"] > 0
    assert as_float["answers"]["decode_share"] > as_base64["answers"]["decode_share"]
    for level in (as_float, as_base64):
        answers = level["answers"]
        assert answers["decode_share"] == pytest.approx(answers["decode_ms_mean"] / level["latency_ms"]["mean"],
                                                        rel=0.01, abs=1e-4)
        # The figures say which dominated: the note is on exactly the cells whose decoding took the larger share.
        dominated = answers["decode_share"] > DECODE_SHARE_NOTE
        assert any("client's decoding, not the server, dominated" in n for n in level["notes"]) == dominated
    # With a 1 ms server, decoding float answers of 4 × 8,192 values dominates; the CLI names that cell.
    lines = cli.summary_lines(doc)
    if as_float["answers"]["decode_share"] > DECODE_SHARE_NOTE:
        assert any(line.startswith("level 0: decoding and checking answers took") for line in lines)
    assert [line.split(":")[0] for line in cli.shape_lines(doc)] == ["encoding float", "encoding base64"]
    assert_portal_accepts(doc)


# ---- the grid: order, indices, thresholds per shape, resume ------------------------------------

GRID_SERVER = {"batch_ms": 2, "token_us": 100, "batch_wait_ms": 0, "delay_ms": 0, "max_batch_tokens": 1_000_000,
               "native_dimensions": 16}


def test_a_batch_grid_runs_shape_by_shape_and_judges_thresholds_at_a_level_of_every_shape():
    # 64 tokens cost 6.4 ms: a request of one text takes about 8.4 ms alone and 28 ms at concurrency 4; one of 8
    # texts 53 ms alone and about 200 ms at concurrency 4. "p99_ms <= 100 at 4" holds for batch 1 only.
    progress = []
    delivered = []
    with running_simulator(**GRID_SERVER) as sim:
        doc = run_sweep(target(sim), {"levels": [1, 4], "warmup_s": 0.2, "duration_s": 1.0, "tokens": 64,
                                      "shape_field": "batch", "shape_values": [1, 8], "timeout_s": 10,
                                      "abort_error_rate": 1.0, "seed": 3, "slo_p99_ms": 150,
                                      "thresholds": ["p99_ms <= 100 at 4", "error_rate <= 0.01"]},
                        on_progress=progress.append, on_level=delivered.append)
    levels = doc["levels"]
    assert delivered == levels
    assert [(lv["index"], lv["shape"], lv["concurrency"]) for lv in levels] == [
        (0, {"field": "batch", "value": 1}, 1), (1, {"field": "batch", "value": 1}, 4),
        (2, {"field": "batch", "value": 8}, 1), (3, {"field": "batch", "value": 8}, 4)]
    assert {p["levels_total"] for p in progress} == {4}
    assert {(p["level_index"], p["shape"]["value"], p["load"]) for p in progress if p["phase"] == "measure"} >= {
        (0, 1, 1), (3, 8, 4)}
    for level in levels:
        assert level["texts_per_s"] == pytest.approx(level["qps"] * level["shape"]["value"], rel=0.01)
    run = doc["run"]
    assert run["verdict"] == "failed"
    assert len(run["verdict_reasons"]) == 1
    reason = run["verdict_reasons"][0]
    assert reason.startswith("p99 latency <= 100 ms at 4 breached at level 4 (batch 8: ")
    assert "batch 1" not in reason
    shapes = doc["summary"]["shapes"]
    assert [(s["field"], s["value"]) for s in shapes] == [("batch", 1), ("batch", 8)]
    one, eight = shapes
    assert eight["peak_texts_per_s"] == pytest.approx(8 * eight["peak_qps"], rel=0.01)
    # The SLO level per shape: batch 1 meets p99 <= 150 ms at 4, batch 8 only alone.
    assert (one["slo_max_level"], eight["slo_max_level"]) == (4, 1)
    assert doc["summary"]["slo_max_level"] == 4
    lines = cli.shape_lines(doc)
    assert lines[0].startswith("batch 1: peak ") and lines[1].startswith("batch 8: peak ")
    assert "p99 <= 150 ms up to level 1" in lines[1]
    assert_portal_accepts(doc)


def test_a_resumed_grid_skips_the_cells_already_measured_and_keeps_the_indices():
    with running_simulator(**GRID_SERVER) as sim:
        doc = run_sweep(target(sim), {"levels": [1, 2], "warmup_s": 0.1, "duration_s": 0.5, "tokens": 16,
                                      "shape_field": "batch", "shape_values": [1, 4], "timeout_s": 10,
                                      "abort_error_rate": 1.0, "seed": 4}, done_indices=[0, 1, 2])
    assert [(lv["index"], lv["shape"]["value"], lv["concurrency"]) for lv in doc["levels"]] == [(3, 4, 2)]
    # Only the shape with a cell left was probed; its cell was all this run had to measure.
    assert [s["value"] for s in doc["inputs"]["shapes"]] == [4]
    assert doc["run"]["verdict"] == "passed", doc["run"]["verdict_reasons"]
    assert [s["peak_qps"] is None for s in doc["summary"]["shapes"]] == [True, False]


def test_a_dimensions_axis_checks_every_answer_against_its_own_length():
    with running_simulator(batch_ms=0, token_us=0, batch_wait_ms=0, delay_ms=2, native_dimensions=64) as sim:
        doc = run_sweep(target(sim), {"levels": [2], "warmup_s": 0.1, "duration_s": 0.5, "tokens": 16,
                                      "shape_field": "dimensions", "shape_values": [16, 48], "timeout_s": 5,
                                      "abort_error_rate": 1.0, "seed": 5})
    small, large = doc["levels"]
    # Answers of 16 and of 48 values all passed the check of their own shape's length (one checked against
    # the other's would be an invalid response each time), and they are three times the size.
    assert small["requests_ok"] > 0 and large["requests_ok"] > 0
    assert small["requests_failed"] == large["requests_failed"] == 0
    assert [s["probe"]["vector_length"] for s in doc["inputs"]["shapes"]] == [16, 48]
    assert large["answers"]["bytes_mean"] > 2 * small["answers"]["bytes_mean"]
    # A server that ignores 'dimensions' passes the shape that asks for its own length and is caught at the next.
    with running_simulator(batch_ms=0, token_us=0, batch_wait_ms=0, delay_ms=2, native_dimensions=64,
                           ignore_dimensions=True) as sim:
        with pytest.raises(SweepError, match="64 values where 32 dimensions were asked for") as caught:
            run_sweep(target(sim), {"levels": [2], "warmup_s": 0.1, "duration_s": 0.5, "tokens": 16,
                                    "shape_field": "dimensions", "shape_values": [64, 32], "timeout_s": 5,
                                    "abort_error_rate": 1.0, "seed": 5})
    partial = caught.value.document
    assert [(lv["shape"]["value"], lv["requests_failed"]) for lv in partial["levels"]] == [(64, 0)]


def test_summarize_groups_stored_levels_by_their_shape():
    def level(index, value, load, qps, p99, error_rate=0.0):
        return {"index": index, "shape": {"field": "tokens", "value": value}, "concurrency": load, "rate": None,
                "status": "completed", "requests_ok": 10, "qps": qps, "texts_per_s": qps, "tokens_per_s": qps * value,
                "latency_ms": {"p99": p99}, "error_rate": error_rate, "client": {}}

    levels = [level(0, 32, 1, 100, 10), level(1, 32, 4, 300, 14), level(2, 512, 1, 20, 50),
              level(3, 512, 4, 90, 45, error_rate=0.2)]
    summary = summarize(levels, 40, None)
    assert summary["peak_qps"] == 300 and summary["errored_levels"] == [4]
    # The errored cell of 512 tokens never counts; its shape's peak is the level that did not error.
    assert summary["shapes"] == [
        {"field": "tokens", "value": 32, "peak_qps": 300, "peak_level": 4, "peak_texts_per_s": 300,
         "peak_tokens_per_s": 9600, "p99_ms_at_peak": 14, "knee_level": None, "slo_max_level": 4},
        {"field": "tokens", "value": 512, "peak_qps": 20, "peak_level": 1, "peak_texts_per_s": 20,
         "peak_tokens_per_s": 10240, "p99_ms_at_peak": 50, "knee_level": None, "slo_max_level": None}]
    assert "shapes" not in summarize([dict(lv, shape=None) for lv in levels], 40, None)


def test_the_cli_takes_a_shape_axis_and_prints_each_shape():
    args = cli.build_parser().parse_args(["run", "--url", "http://x/v1", "--model", "m", "--levels", "1,4",
                                          "--shape", "tokens=32,128,512"])
    plan = cli.plan_from_args(args)
    assert (plan["shape_field"], plan["shape_values"]) == ("tokens", ["32", "128", "512"])
    assert normalize_plan(plan)["shape_values"] == [32, 128, 512]
    assert cli.main(["run", "--url", "http://127.0.0.1:9/v1", "--model", "m", "--shape", "tokens"]) == 2
    assert cli.main(["run", "--url", "http://127.0.0.1:9/v1", "--model", "m", "--shape", "tokens=1,99999"]) == 2


def test_load_processes_send_each_shapes_requests_with_texts_never_sent_before():
    with running_simulator(batch_ms=0, token_us=0, batch_wait_ms=0, delay_ms=2, native_dimensions=16) as sim:
        doc = run_sweep(target(sim), {"levels": [2], "warmup_s": 0.1, "duration_s": 0.5, "tokens": 16,
                                      "shape_field": "batch", "shape_values": [1, 3], "processes": 2,
                                      "timeout_s": 5, "abort_error_rate": 1.0, "seed": 6})
        assert sim.stats.duplicate_texts == 0
    one, three = doc["levels"]
    assert one["requests_ok"] > 0 and three["requests_ok"] > 0
    assert one["texts_per_s"] == pytest.approx(one["qps"], rel=0.01)
    assert three["texts_per_s"] == pytest.approx(3 * three["qps"], rel=0.01)


def test_a_level_the_abort_policy_stops_ends_its_shape_and_the_next_shape_runs(monkeypatch):
    from benchmarks.sweep import Sweep

    measure = Sweep._run_level

    def stopped_at_first(self, pool, index, load, mode=None):
        level = measure(self, pool, index, load, mode)
        if index == 0:  # as the abort policy leaves a level: its figures stand, its status says why it ended
            level.update(status="aborted", abort_reason="error rate above 50% for 10 s in a row")
        return level

    monkeypatch.setattr(Sweep, "_run_level", stopped_at_first)
    with running_simulator(**GRID_SERVER) as sim:
        doc = run_sweep(target(sim), {"levels": [1, 2], "warmup_s": 0.1, "duration_s": 0.4, "tokens": 16,
                                      "shape_field": "batch", "shape_values": [1, 4], "timeout_s": 10,
                                      "abort_error_rate": 1.0, "seed": 7})
    assert [(lv["index"], lv["shape"]["value"], lv["status"]) for lv in doc["levels"]] == [
        (0, 1, "aborted"), (2, 4, "completed"), (3, 4, "completed")]
    run = doc["run"]
    assert run["status"] == "succeeded" and run["aborted_at_level"] == 1
    assert run["status_reason"] == ("batch 1: stopped after level 0 (load 1): error rate above 50% for 10 s in a "
                                    "row; the next shape went on")
    assert "the abort policy stopped the sweep at level 1; 1 of 4 levels were not measured" in run["verdict_reasons"]
