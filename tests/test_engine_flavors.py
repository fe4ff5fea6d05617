"""Flavors: request bodies carry only accepted fields; every answer is validated."""
import base64
import math

import numpy as np
import orjson
import pytest

from benchmarks.errors import ConfigError, InvalidResponse
from benchmarks.flavors import error_text, make_flavor, request_headers


def openai_answer(vectors, tokens=7, encoding="float"):
    data = []
    for i, vec in enumerate(vectors):
        if encoding == "base64":
            emb = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
        else:
            emb = vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return orjson.dumps({"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": tokens}})


def test_openai_body_sends_only_requested_fields():
    plain = orjson.loads(make_flavor("openai", "m").body(["a", "b"]))
    assert plain == {"model": "m", "input": ["a", "b"]}
    full = orjson.loads(make_flavor("openai", "m", dimensions=256, encoding="base64").body(["a"]))
    assert full == {"model": "m", "input": ["a"], "dimensions": 256, "encoding_format": "base64"}


def test_tei_and_ollama_bodies_and_urls():
    tei = make_flavor("tei", "ignored")
    assert orjson.loads(tei.body(["x"])) == {"inputs": ["x"]}
    assert tei.url("http://h:8080/") == "http://h:8080/embed"
    ollama = make_flavor("ollama", "nomic", dimensions=64)
    assert orjson.loads(ollama.body(["x"])) == {"model": "nomic", "input": ["x"], "dimensions": 64}
    assert ollama.url("http://h:11434") == "http://h:11434/api/embed"
    assert make_flavor("openai", "m").url("http://h:30000/v1") == "http://h:30000/v1/embeddings"


def test_base64_refused_where_the_flavor_has_none():
    with pytest.raises(ConfigError, match="base64"):
        make_flavor("tei", "m", encoding="base64")
    with pytest.raises(ConfigError, match="unknown flavor"):
        make_flavor("grpc", "m")


def test_valid_float_answer_returns_usage_tokens():
    flavor = make_flavor("openai", "m")
    assert flavor.validate(openai_answer([[0.1, 0.2, 0.3]] * 2, tokens=11), 2, 3) == 11


def test_valid_base64_answer():
    flavor = make_flavor("openai", "m", encoding="base64")
    assert flavor.validate(openai_answer([[0.5] * 8], encoding="base64"), 1, 8) == 7


@pytest.mark.parametrize(
    ("raw", "n", "dims", "message"),
    [
        (openai_answer([[0.1, 0.2]]), 2, 2, "1 embeddings for 2 input texts"),
        (openai_answer([[0.1, 0.2]]), 1, 3, "has 2 values, expected 3"),
        (orjson.dumps({"data": [{"embedding": [0.1, None]}]}), 1, 2, "null"),
        (b'{"data": [{"embedding": [0.1, NaN]}]}', 1, 2, "non-finite"),
        (orjson.dumps({"data": [{"embedding": [0.1, "x"]}]}), 1, 2, "not a number"),
        (b"<html>oops</html>", 1, 2, "not JSON"),
        (orjson.dumps({"embeddings": [[0.1]]}), 1, 1, "no 'data' list"),
        (orjson.dumps({"data": [{"vector": [0.1]}]}), 1, 1, "no 'embedding'"),
    ],
)
def test_wrong_float_answers_are_invalid(raw, n, dims, message):
    flavor = make_flavor("openai", "m")
    with pytest.raises(InvalidResponse, match=message):
        flavor.validate(raw, n, dims)


def test_huge_finite_values_pass_although_their_sum_overflows():
    raw = orjson.dumps({"data": [{"embedding": [1e308, 1e308]}]})
    assert make_flavor("openai", "m").validate(raw, 1, 2) is None  # valid, no usage reported


def test_wrong_base64_answers_are_invalid():
    flavor = make_flavor("openai", "m", encoding="base64")
    with pytest.raises(InvalidResponse, match="decodes to 3 float32 values, expected 4"):
        flavor.validate(openai_answer([[0.1] * 3], encoding="base64"), 1, 4)
    with pytest.raises(InvalidResponse, match="non-finite"):
        flavor.validate(openai_answer([[0.1, math.nan]], encoding="base64"), 1, 2)
    with pytest.raises(InvalidResponse, match="expected a base64 string"):
        flavor.validate(openai_answer([[0.1, 0.2]]), 1, 2)


def test_tei_tokens_come_from_its_header():
    tei = make_flavor("tei", "")
    raw = orjson.dumps([[0.1, 0.2], [0.3, 0.4]])
    assert tei.validate(raw, 2, 2, {"x-compute-tokens": "12"}) == 12
    assert tei.validate(raw, 2, 2, {}) is None
    with pytest.raises(InvalidResponse, match="not a list of vectors"):
        tei.validate(orjson.dumps({"data": []}), 1, 2)


def test_ollama_answer():
    ollama = make_flavor("ollama", "m")
    raw = orjson.dumps({"model": "m", "embeddings": [[0.1, 0.2]], "prompt_eval_count": 5})
    assert ollama.validate(raw, 1, 2) == 5
    assert ollama.inspect(raw, 1) == {"served_model": "m", "vector_length": 2, "norm": pytest.approx(0.05 ** 0.5),
                                    "prompt_tokens": 5}


def test_inspect_checks_against_requested_dimensions():
    flavor = make_flavor("openai", "m", dimensions=4)
    with pytest.raises(InvalidResponse, match="expected 4"):
        flavor.inspect(openai_answer([[0.1, 0.2]]), 1)


def test_error_text_and_headers():
    assert error_text(orjson.dumps({"error": {"message": "bad  model"}})) == "bad model"
    assert error_text(orjson.dumps({"detail": [{"msg": "field required"}]})).startswith("[{")
    assert error_text(orjson.dumps({"error": "e" * 500})) == "e" * 199 + "…"  # JSON errors: 200 characters
    # Anything else is described, never quoted (it may be an internal page or a service's banner).
    assert error_text(b"<html>intranet</html>", "text/html; charset=utf-8") == "no error message (text/html, 21 bytes)"
    assert error_text(b'{"status": "down"}', "application/json") == "no error message (application/json, 18 bytes)"
    assert error_text(b"", None) == "no error message (no Content-Type, empty body)"
    assert request_headers("k")["Authorization"] == "Bearer k"
    assert "Authorization" not in request_headers(None)
