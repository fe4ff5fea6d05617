"""Inputs: unique texts, calibration maths, corpus without reuse, repeat mode; statistics merging."""
import pytest

from benchmarks import stats
from benchmarks.errors import ConfigError
from benchmarks.inputs import InputSource, fit_length, load_corpus


def test_unique_texts_are_unique_and_start_differently():
    source = InputSource("unique", batch=4, chars_per_text=300, seed=1)
    texts = [t for _ in range(2000) for t in source.next_texts()]
    assert len(set(texts)) == len(texts) == 8000
    # Distinct first 20 characters: a prefix cache finds nothing to share.
    assert len({t[:20] for t in texts}) == len(texts)
    lengths = [len(t) for t in texts]
    assert 300 <= min(lengths) and max(lengths) <= 300 + 40


def test_processes_and_runs_never_share_a_text():
    a = InputSource("unique", chars_per_text=50, seed=1, salt="aaa", stream_index=0)
    b = InputSource("unique", chars_per_text=50, seed=1, salt="aaa", stream_index=1)
    other_run = InputSource("unique", chars_per_text=50, seed=1, salt="bbb", stream_index=0)
    texts = [s.next_texts()[0] for s in (a, b, other_run) for _ in range(500)]
    assert len(set(texts)) == 1500


def test_repeat_mode_sends_one_text():
    source = InputSource("repeat", batch=2, chars_per_text=100, seed=3)
    assert len({t for _ in range(10) for t in source.next_texts()}) == 1


def test_corpus_is_split_between_processes_without_reuse_until_exhausted():
    corpus = [f"text {i}" for i in range(10)]
    p0 = InputSource("corpus", corpus=corpus, stream_index=0, stream_count=2)
    p1 = InputSource("corpus", corpus=corpus, stream_index=1, stream_count=2)
    first = [p.next_texts()[0] for _ in range(5) for p in (p0, p1)]
    assert sorted(first) == sorted(corpus)
    assert p0.corpus_reused == 0
    p0.next_texts()
    assert p0.corpus_reused == 1


def test_fit_length_uses_slope_and_intercept():
    # tokens = 10 + chars / 4
    samples = [(200, 60), (400, 110)]
    assert fit_length(samples, 138) == 512
    assert fit_length([(400, 100)], 50) == 200


def test_load_corpus_lines_and_jsonl(tmp_path):
    plain = tmp_path / "c.txt"
    plain.write_text("one\n\ntwo\n")
    assert load_corpus(str(plain)) == ["one", "two"]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"text": "alpha"}\n{"text": "beta"}\n')
    assert load_corpus(str(jsonl)) == ["alpha", "beta"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "x"}\n')
    with pytest.raises(ConfigError, match="line 1: JSON line without a 'text'"):
        load_corpus(str(bad))
    with pytest.raises(ConfigError, match="cannot read corpus file"):
        load_corpus(str(tmp_path / "missing.txt"))


def test_histograms_merge_exactly():
    a, b, both = stats.new_histogram(), stats.new_histogram(), stats.new_histogram()
    for i in range(1, 1001):
        target = a if i % 2 else b
        stats.record_seconds(target, i / 1000)
        stats.record_seconds(both, i / 1000)
    merged = stats.merge([stats.encode(a), stats.encode(b), None])
    assert merged.get_total_count() == 1000
    assert stats.summary_ms(merged) == stats.summary_ms(both)
    summary = stats.summary_ms(both)
    assert summary["p50"] == pytest.approx(500, rel=0.002)
    assert summary["p99"] == pytest.approx(990, rel=0.002)
    assert summary["max"] == pytest.approx(1000, rel=0.002)
    assert stats.summary_ms(stats.new_histogram())["p99"] is None
