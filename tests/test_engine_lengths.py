"""Length distributions: a plan's texts of one length, of lengths drawn uniformly, or log-normal
around a median; what each level reports it sent.

The tokenizer is trained in the test on the engine's own word list (tests/test_engine_tokens.py)."""
import hashlib
import json
import math
import random

import pytest
from tokenizers import Tokenizer

from benchmarks import cli
from benchmarks.errors import ConfigError
from benchmarks.inputs import TOKENS_MOST, InputSource, Lengths
from benchmarks.plan import PlanLimits, longest_tokens, median_tokens, normalize_plan, plan_errors, worst_case_bytes
from benchmarks.simulator import running_simulator
from benchmarks.sweep import run_sweep
from benchmarks.tokens import count
from tests.test_engine_sweep import assert_portal_accepts
from tests.test_engine_tokens import FAST, target, wordpiece

Z_P90 = 1.2816  # the standard normal's 90th percentile


def plan(**overrides):
    base = {"levels": [4], "warmup_s": 0.3, "duration_s": 2, "tokens": 128, "dimensions": 32,
            "timeout_s": 5, "abort_error_rate": 1.0, "seed": 1, "batch": 8}
    base.update(overrides)
    return base


def errors_of(**fields) -> dict:
    return plan_errors({"levels": [1], **fields})[1]


# ---- the plan rule ---------------------------------------------------------------------------

def test_a_fixed_length_is_the_default_and_leaves_the_distribution_fields_empty():
    checked = normalize_plan({"levels": [1]})
    assert checked["length"] == "fixed"
    assert (checked["tokens_min"], checked["tokens_max"], checked["tokens_sigma"]) == (None, None, None)
    assert median_tokens(checked) == longest_tokens(checked) == 512


def test_a_uniform_length_defaults_to_half_and_one_and_a_half_times_tokens():
    checked = normalize_plan({"levels": [1], "length": "uniform", "tokens": 512})
    assert (checked["tokens_min"], checked["tokens_max"]) == (256, 768)
    assert median_tokens(checked) == 512
    assert normalize_plan(checked) == checked  # checked twice (saved, then run), it reads the same
    given = normalize_plan({"levels": [1], "length": "uniform", "tokens_min": 100, "tokens_max": 301})
    assert (given["tokens_min"], given["tokens_max"], median_tokens(given)) == (100, 301, 200)
    assert longest_tokens(given) == 301


def test_a_uniform_range_upside_down_is_refused():
    assert errors_of(length="uniform", tokens_min=900, tokens_max=100) == {"tokens_min": [
        "The shortest text (900 tokens) is longer than the longest (100 tokens); give tokens_min at most tokens_max."]}
    # One end unset: the message says what the unset end was.
    message = errors_of(length="uniform", tokens=512, tokens_min=1000)["tokens_min"][0]
    assert message.startswith("The shortest text (1000 tokens) is longer than the longest (768 tokens)")
    assert "unset, tokens_min is half of tokens and tokens_max one and a half times it" in message


def test_the_bounds_of_the_distribution_fields():
    assert errors_of(length="uniform", tokens_min=0, tokens_max=10) == {
        "tokens_min": ["The shortest text must be at least 1 tokens; 0 is too low."]}
    assert errors_of(length="uniform", tokens_min=1, tokens_max=40_000) == {
        "tokens_max": ["The longest text may be at most 32768 tokens; 40000 is too high."]}
    assert errors_of(length="uniform", tokens_min=1.5, tokens_max=10) == {
        "tokens_min": ["The shortest text must be a whole number, not 1.5."]}
    assert errors_of(length="lognormal", tokens_sigma=0) == {
        "tokens_sigma": ["The length spread (sigma) must be greater than 0; 0 is too low."]}
    assert errors_of(length="lognormal", tokens_sigma=3.5) == {
        "tokens_sigma": ["The length spread (sigma) may be at most 3; 3.5 is too high."]}
    assert errors_of(length="normal") == {
        "length": ["Choose one of fixed, uniform, lognormal; 'normal' is not one of them."]}


def test_a_distribution_field_needs_its_distribution():
    assert errors_of(tokens_min=10) == {"tokens_min": [
        "The shortest text is set by a uniform length; this plan's length is fixed: choose length uniform, "
        "or leave tokens_min empty."]}
    assert errors_of(length="uniform", tokens_sigma=0.5) == {"tokens_sigma": [
        "The length spread (sigma) is set by a lognormal length; this plan's length is uniform: choose length "
        "lognormal, or leave tokens_sigma empty."]}
    assert set(errors_of(length="lognormal", tokens_max=900)) == {"tokens_max"}


def test_a_distribution_applies_to_unique_texts_only():
    assert errors_of(length="lognormal", input="corpus", corpus=["a text"]) == {"length": [
        "A lognormal length applies to unique texts only; a corpus is sent as it is, so its texts keep their own "
        "lengths. Choose length fixed, or the unique input."]}
    assert errors_of(length="uniform", input="repeat") == {"length": [
        "A uniform length applies to unique texts only; a repeated input is one text of `tokens` tokens. Choose "
        "length fixed, or the unique input."]}
    with pytest.raises(ConfigError, match="unique texts only"):
        InputSource("repeat", lengths=Lengths("uniform", 100, 50, 150))


def test_a_lognormal_length_has_a_default_spread_and_sizes_memory_at_its_p999():
    checked = normalize_plan({"levels": [1], "length": "lognormal", "tokens": 512})
    assert checked["tokens_sigma"] == 0.5 and median_tokens(checked) == 512
    # p99.9 of the count: 512 * exp(0.5 * 3.0902), 2,401 tokens; a wide spread is clipped at the bound.
    assert longest_tokens(checked) == math.ceil(512 * math.exp(0.5 * 3.0902)) == 2401
    assert longest_tokens({**checked, "tokens_sigma": 3}) == TOKENS_MOST
    limits = PlanLimits()
    fixed = normalize_plan({"levels": [1], "tokens": 512})
    assert worst_case_bytes(checked, limits) - worst_case_bytes(fixed, limits) == (2401 - 512) * 8
    # The worker memory check counts the longest texts: fine at a fixed length, refused when spread.
    small = PlanLimits(max_worker_memory_mib=128)
    busy = {"levels": [64], "batch": 64, "tokens": 2048, "dimensions": 64}
    assert plan_errors(busy, small)[1] == {}
    refused = plan_errors({**busy, "length": "lognormal", "tokens_sigma": 1.5}, small)[1]
    assert "the tokens per text (the longest of its length distribution) or" in refused["levels"][0]


# ---- the texts -------------------------------------------------------------------------------

def test_a_fixed_length_makes_the_texts_it_always_made():
    # The texts of this seed before length distributions existed: a fixed plan draws nothing more.
    source = InputSource("unique", seed=5, salt="abc", chars_per_text=300, batch=2,
                         lengths=Lengths.from_plan(normalize_plan({"levels": [1]})))
    texts = [text for _ in range(5) for text in source.next_texts()]
    assert hashlib.sha256("\n".join(texts).encode()).hexdigest() == (
        "f1ce80666402698bfd924ef28e99ce87caf5d8fdc608a51b5b08c19a13557a9a")
    assert source.last_lengths is None


def test_uniform_counts_with_a_tokenizer_stay_in_the_range():
    tokenizer = wordpiece()
    source = InputSource("unique", batch=4, tokenizer=tokenizer, seed=3, lengths=Lengths("uniform", 128, 40, 200))
    seen, counts = set(), []
    for _ in range(100):
        texts = source.next_texts()
        assert source.last_tokens == sum(source.last_lengths)
        for text, n in zip(texts, source.last_lengths, strict=True):
            assert 40 <= n <= 200
            assert abs(count(tokenizer, text) - n) <= 1, text
            seen.add(text)
            counts.append(n)
    assert len(seen) == 400
    # Uniform over 161 whole numbers: 400 draws reach near both ends (each end's 10 values: p = 1 - 0.94^400).
    assert min(counts) < 50 and max(counts) > 190


def test_without_a_tokenizer_the_characters_scale_with_the_drawn_count():
    source = InputSource("unique", chars_per_text=400, seed=2, batch=1, salt="abcdef",
                         lengths=Lengths("lognormal", 100, sigma=0.8))
    for _ in range(200):
        (text,) = source.next_texts()
        (target_tokens,) = source.last_lengths
        window = len(text) - len("abcdef00000000001 ")
        # 4 characters per token at the median; a window ends at the next word boundary (words < 12 characters).
        assert window == pytest.approx(min(4 * target_tokens, len(source._stream) // 2), abs=12)


def test_a_seeded_source_draws_the_same_lengths_and_texts():
    def made(seed):
        source = InputSource("unique", seed=seed, salt="abc", chars_per_text=200, batch=3,
                             lengths=Lengths("lognormal", 50, sigma=1.0))
        texts, lengths = [], []
        for _ in range(10):
            texts += source.next_texts()
            lengths += source.last_lengths
        return texts, lengths

    assert made(7) == made(7)
    assert made(7)[1] != made(8)[1]


# ---- what a level reports --------------------------------------------------------------------

def test_a_lognormal_plan_reports_the_distribution_of_its_parameters(tokenizer_file):
    tokens, sigma = 256, 0.5
    tokenizer = Tokenizer.from_file(tokenizer_file)
    with running_simulator(**FAST) as sim:
        doc = run_sweep(target(sim, tokenizer=tokenizer_file),
                        plan(tokens=tokens, length="lognormal", tokens_sigma=sigma, processes=2))
        texts = [t for t in sim.texts_seen if t[6:8] in ("00", "01")]
    level = doc["levels"][0]
    sent = level["input_tokens"]
    assert sent["source"] == "tokenizer"
    n = sent["n"]
    assert n >= 1000, sent
    # Both load processes' texts, merged: every text of the window's requests.
    assert n == pytest.approx(level["requests_started"] * 8, rel=0.02)
    # Sampling error of a sample quantile: for n draws, the p-quantile of N(0, 1) has a standard error of
    # sqrt(p (1 - p)) / phi(z_p) / sqrt(n), i.e. 1.2533 / sqrt(n) for the median and 1.7094 / sqrt(n) for
    # p90; in log-count space times sigma. Five standard errors (a false failure in about 10^6 runs),
    # plus one token for rounding the drawn count and cutting at a word boundary.
    tol_p50 = 5 * sigma * 1.2533 / math.sqrt(n) + 1 / tokens
    p90 = tokens * math.exp(Z_P90 * sigma)
    tol_p90 = 5 * sigma * 1.7094 / math.sqrt(n) + 1 / p90
    assert abs(math.log(sent["p50"] / tokens)) <= tol_p50, (sent, tol_p50)
    assert abs(math.log(sent["p90"] / p90)) <= tol_p90, (sent, tol_p90)
    assert sent["p50"] <= sent["p90"] <= sent["max"]
    # The mean of a log-normal count is exp(sigma^2 / 2) times its median.
    assert sent["mean"] == pytest.approx(tokens * math.exp(sigma ** 2 / 2), rel=0.05)
    # The texts the server got have those counts: the tokenizer's own count of a few of them.
    spot = random.Random(0).sample(sorted(texts), 50)
    assert max(count(tokenizer, t) for t in spot) > tokens > min(count(tokenizer, t) for t in spot)
    assert doc["inputs"]["calibration"]["target_tokens"] == tokens
    assert_portal_accepts(doc)


def test_without_a_tokenizer_a_level_reports_the_drawn_targets():
    with running_simulator(**FAST) as sim:
        doc = run_sweep(target(sim), plan(duration_s=1, length="uniform", tokens_min=50, tokens_max=150))
    sent = doc["levels"][0]["input_tokens"]
    assert sent["source"] == "target" and sent["n"] > 100
    assert 50 <= sent["p50"] <= sent["p90"] <= sent["max"] <= 150
    # Calibrated at the middle of the range.
    assert doc["inputs"]["calibration"]["target_tokens"] == 100
    assert doc["levels"][0]["tokens_per_text"]["mean"] == pytest.approx(100, rel=0.15)
    assert doc["plan"]["length"] == "uniform" and doc["plan"]["tokens_min"] == 50
    assert_portal_accepts(doc)


def test_a_fixed_plan_level_has_no_input_tokens_section():
    with running_simulator(**FAST) as sim:
        doc = run_sweep(target(sim), plan(duration_s=0.5, levels=[1], batch=1))
    assert "input_tokens" not in doc["levels"][0]
    assert doc["plan"]["length"] == "fixed"


# ---- the command line ------------------------------------------------------------------------

def test_cli_length_options_and_the_level_line(tmp_path, capsys):
    out_file = tmp_path / "run.json"
    with running_simulator(**FAST) as sim:
        status = cli.main(["run", "--url", sim.base_url, "--model", "sim-embed", "--levels", "2",
                           "--duration", "1", "--warmup", "0.2", "--length", "lognormal", "--tokens", "64",
                           "--tokens-sigma", "0.4", "--json", str(out_file)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    doc = json.loads(out_file.read_text())
    assert (doc["plan"]["length"], doc["plan"]["tokens_sigma"]) == ("lognormal", 0.4)
    sent = doc["levels"][0]["input_tokens"]
    line = f"target tokens/text p50 {sent['p50']} p90 {sent['p90']} max {sent['max']}"
    assert line in captured.err


def test_cli_refuses_a_distribution_option_without_its_length(capsys):
    assert cli.main(["run", "--url", "http://127.0.0.1:9/v1", "--model", "m", "--tokens-sigma", "0.5"]) == 2
    assert ("--tokens-sigma: The length spread (sigma) is set by a lognormal length; this plan's length is fixed"
            in capsys.readouterr().err)
    assert cli.main(["capacity", "--url", "http://127.0.0.1:9/v1", "--model", "m", "--slo-p99-ms", "100",
                     "--length", "uniform", "--tokens-min", "90", "--tokens-max", "10"]) == 2
    err = capsys.readouterr().err
    assert "--tokens-min: The shortest text (90 tokens) is longer than the longest (10 tokens)" in err
