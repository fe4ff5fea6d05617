"""Token counts that stay true: the model's own tokenizer, and the server's usage cross-checked.

The tokenizers here are trained in the test on the engine's own word list (nothing is fetched)."""
import asyncio
import hashlib
import json
import os
import threading
import time

import pytest
from aiohttp import web
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

from benchmarks import cli
from benchmarks.errors import ConfigError
from benchmarks.inputs import WORDS, InputSource
from benchmarks.simulator import count_tokens, running_simulator
from benchmarks.sweep import run_sweep
from benchmarks.tokens import check_usage, count, resolve_tokenizer

FAST = {"batch_ms": 0, "token_us": 0, "batch_wait_ms": 0, "delay_ms": 5}
CORPUS = [" ".join(WORDS)] * 3


def wordpiece() -> Tokenizer:
    """A BERT-like tokenizer: word pieces, [CLS] and [SEP] around every text."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300,
                                                                    special_tokens=["[UNK]", "[CLS]", "[SEP]"]))
    tokenizer.post_processor = processors.BertProcessing(("[SEP]", tokenizer.token_to_id("[SEP]")),
                                                         ("[CLS]", tokenizer.token_to_id("[CLS]")))
    return tokenizer


def byte_level_bpe() -> Tokenizer:
    """A GPT-like tokenizer: byte-level BPE, the space inside a word's first token."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400,
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tokenizer


def target(sim, **extra):
    return {"name": "sim", "flavor": "openai", "base_urls": [sim.base_url], "model": "sim-embed", **extra}


def plan(**overrides):
    base = {"levels": [2], "warmup_s": 0.3, "duration_s": 1.5, "tokens": 128, "dimensions": 32,
            "timeout_s": 5, "abort_error_rate": 1.0, "seed": 1}
    base.update(overrides)
    return base


def load_texts(sim, doc_salt_len=6) -> list[str]:
    # Load texts carry the run salt then the process number 00; calibration texts 98 or 99 after a letter.
    return [t for t in sim.texts_seen if t[doc_salt_len:doc_salt_len + 2] == "00"]


@pytest.mark.parametrize("make", [wordpiece, byte_level_bpe], ids=["wordpiece", "byte-level-bpe"])
@pytest.mark.parametrize("tokens", [24, 128, 512])
def test_texts_cut_by_the_tokenizer_have_the_planned_count(make, tokens):
    tokenizer = make()
    source = InputSource("unique", tokenizer=tokenizer, tokens_per_text=tokens, seed=3)
    texts = set()
    for _ in range(200):
        (text,) = source.next_texts()
        texts.add(text)
        assert abs(count(tokenizer, text) - tokens) <= 1, text
        assert source.last_tokens == tokens
    assert len(texts) == 200


def test_a_batch_reports_the_tokens_of_all_its_texts():
    tokenizer = wordpiece()
    source = InputSource("unique", batch=4, tokenizer=tokenizer, tokens_per_text=64, seed=3)
    texts = source.next_texts()
    assert source.last_tokens == 4 * 64
    assert sum(count(tokenizer, t) for t in texts) == pytest.approx(256, abs=4)


def test_usage_that_counts_characters_or_words_is_named():
    text = "0a1b2c00000000001 the quick brown fox jumps over the lazy dog and runs far away"
    short = text[:40]
    assert check_usage([(short, len(short)), (text, len(text))]).kind == "characters"
    assert "counts characters, not tokens" in check_usage([(text, len(text))]).note
    assert check_usage([(short, len(short.split())), (text, len(text.split()))]).kind == "words"
    # Characters or words plus the special tokens of the server's count are still named.
    assert check_usage([(short, len(short) + 2), (text, len(text) + 2)]).kind == "characters"
    assert check_usage([(text, len(text.split()) + 2)]).kind == "words"
    assert check_usage([(text, 2)]).kind == "implausible"  # 40 characters per token
    assert check_usage([(text, len(text) - 10)]).kind == "implausible"  # 1.1 characters per token
    assert check_usage([(text, None)]).kind == "none"
    assert check_usage([(short, count_tokens(short)), (text, count_tokens(text))]).usable


def test_server_counting_characters_with_a_tokenizer(tokenizer_file):
    tokenizer = Tokenizer.from_file(tokenizer_file)
    with running_simulator(usage="characters", **FAST) as sim:
        doc = run_sweep(target(sim, tokenizer=tokenizer_file), plan())
        texts = load_texts(sim)
    tokens = doc["inputs"]["tokens"]
    assert tokens["source"] == "tokenizer" and tokens["usage"] == "characters"
    assert tokens["usage_note"] == "the server's usage counts characters, not tokens"
    # The server's "tokens" are characters: several per real token (2.5 for this small vocabulary).
    assert 2 < tokens["usage_ratio"] < 8
    assert len(texts) > 20
    for text in texts:
        assert count(tokenizer, text) == pytest.approx(128, rel=0.02)
    level = doc["levels"][0]
    assert level["tokens_source"] == "tokenizer" and level["tokens_estimated"] is False
    # tokens/s comes from the tokenizer: 128 per text, not the character count.
    assert level["tokens_per_s"] == pytest.approx(level["texts_per_s"] * 128, rel=0.02)
    assert level["tokens_per_text"]["mean"] == pytest.approx(128, abs=1)
    assert 2 < level["usage_tokens_ratio"] < 8


def test_server_counting_characters_without_a_tokenizer_is_flagged_as_an_estimate():
    with running_simulator(usage="characters", **FAST) as sim:
        doc = run_sweep(target(sim), plan())
    tokens = doc["inputs"]["tokens"]
    assert tokens["source"] == "estimate" and tokens["usage"] == "characters"
    assert doc["inputs"]["calibration"]["estimated"] is True
    # Not calibrated to characters: texts are sized at ~4 characters per token.
    assert doc["inputs"]["calibration"]["chars_per_token"] == 4.0
    level = doc["levels"][0]
    assert level["tokens_estimated"] is True and level["tokens_source"] == "estimate"
    assert level["tokens_per_s"] == pytest.approx(level["texts_per_s"] * 128, rel=0.02)


@pytest.mark.parametrize("usage, kind", [("words", "words"), ("none", "none")])
def test_other_misreports_fall_back_to_an_estimate(usage, kind):
    with running_simulator(usage=usage, **FAST) as sim:
        doc = run_sweep(target(sim), plan(tokens=64))
    assert doc["inputs"]["tokens"]["usage"] == kind
    assert doc["inputs"]["tokens"]["source"] == "estimate"
    assert doc["levels"][0]["tokens_estimated"] is True


def test_usage_in_a_header_is_used():
    with running_simulator(usage="header", **FAST) as sim:
        doc = run_sweep(target(sim), plan(tokens=64))
    assert doc["inputs"]["tokens"]["source"] == "server usage"
    assert doc["inputs"]["calibration"]["measured_tokens"] == pytest.approx(64, rel=0.05)
    assert doc["levels"][0]["tokens_estimated"] is False


def test_every_load_process_cuts_texts_with_the_tokenizer(tokenizer_file):
    tokenizer = Tokenizer.from_file(tokenizer_file)
    with running_simulator(**FAST) as sim:
        doc = run_sweep(target(sim, tokenizer=tokenizer_file), plan(processes=2, levels=[4]))
        texts = [t for t in sim.texts_seen if t[6:8] in ("00", "01")]
    assert {t[6:8] for t in texts} == {"00", "01"}
    assert all(abs(count(tokenizer, t) - 128) <= 1 for t in texts)
    assert doc["levels"][0]["tokens_source"] == "tokenizer"


def test_tokenizer_and_honest_usage_report_their_ratio(tokenizer_file):
    with running_simulator(**FAST) as sim:
        doc = run_sweep(target(sim, tokenizer=tokenizer_file), plan(tokens=64))
    tokens = doc["inputs"]["tokens"]
    assert tokens["usage"] == "tokens" and tokens["usage_note"] is None
    assert tokens["usage_ratio"] > 0 and doc["levels"][0]["usage_tokens_ratio"] > 0


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    # The note column is read whole, not wrapped at 80 columns.
    monkeypatch.setenv("COLUMNS", "250")


def _cli(args, capsys):
    status = cli.main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_note_column_says_the_usage_counts_characters(tokenizer_file, tmp_path, capsys):
    out_file = tmp_path / "run.json"
    with running_simulator(usage="characters", **FAST) as sim:
        status, out, err = _cli(["run", "--url", sim.base_url, "--model", "sim-embed", "--levels", "2",
                                 "--duration", "1", "--warmup", "0.2", "--tokens", "64", "--quiet",
                                 "--tokenizer", tokenizer_file, "--json", str(out_file)], capsys)
    assert status == 0, err
    assert "usage counts characters; tokens by tokenizer" in " ".join(out.split())
    assert "the server's usage counts characters, not tokens (not used)" in out
    doc = json.loads(out_file.read_text())
    assert doc["target"]["tokenizer"] == tokenizer_file


def test_cli_note_column_flags_the_estimate(capsys):
    with running_simulator(usage="characters", **FAST) as sim:
        status, out, err = _cli(["run", "--url", sim.base_url, "--model", "sim-embed", "--levels", "2",
                                 "--duration", "1", "--warmup", "0.2", "--tokens", "64", "--quiet"], capsys)
    assert status == 0, err
    assert "tokens estimated (usage counts characters)" in " ".join(out.split())
    assert "tokens estimated at 4 characters per token: the server's usage counts characters" in out


def test_a_missing_tokenizer_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_tokenizer(str(tmp_path / "nope" / "tokenizer.json"))


def test_a_folder_holding_tokenizer_json_is_accepted(tokenizer_file):
    assert resolve_tokenizer(os.path.dirname(tokenizer_file)) == tokenizer_file


def test_offline_host_gets_a_clear_message_quickly(tmp_path, monkeypatch):
    # A hub that cannot be reached (nothing listens on port 9): no fetch leaves this machine.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="cannot fetch sentence-transformers/all-MiniLM-L6-v2") as info:
        resolve_tokenizer("sentence-transformers/all-MiniLM-L6-v2", var_dir=tmp_path, timeout_s=2)
    assert time.monotonic() - started < 20
    assert "tokenizer.json" in str(info.value)


def test_a_sweep_with_an_unreachable_tokenizer_fails_with_the_message(tmp_path, monkeypatch):
    from benchmarks.errors import SweepError

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("EMBPERF_VAR_DIR", str(tmp_path))
    with running_simulator(**FAST) as sim:
        with pytest.raises(SweepError, match="cannot fetch"):
            run_sweep(target(sim, tokenizer="org/model"), plan())


@pytest.fixture
def local_hub(monkeypatch):
    """A stand-in for the Hugging Face Hub on 127.0.0.1 that serves one tokenizer.json (nothing leaves
    this machine); yields the list of requests it received."""
    data = wordpiece().to_str().encode()
    etag = hashlib.sha256(data).hexdigest()
    requests = []

    async def resolve(request):
        requests.append((request.method, request.path))
        headers = {"X-Repo-Commit": "a" * 40, "ETag": f'"{etag}"'}
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(data))})
        return web.Response(body=data, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{org}/{name}/resolve/{rev}/{file}", resolve)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}")
    try:
        yield requests
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_a_model_id_is_fetched_once_into_the_data_folder(local_hub, tmp_path):
    path = resolve_tokenizer("org/model", var_dir=tmp_path)
    assert path.startswith(str(tmp_path / "tokenizers")) and path.endswith("tokenizer.json")
    assert ("GET", "/org/model/resolve/main/tokenizer.json") in local_hub
    local_hub.clear()
    # The second time (another run, another worker sharing the folder) asks the hub nothing.
    assert resolve_tokenizer("org/model", var_dir=tmp_path) == path
    assert local_hub == []
    assert count(Tokenizer.from_file(path), "the quick brown fox") == count(wordpiece(), "the quick brown fox")


def test_a_sweep_fetches_the_tokenizer_of_a_model_id(local_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBPERF_VAR_DIR", str(tmp_path))
    with running_simulator(usage="characters", **FAST) as sim:
        doc = run_sweep(target(sim, tokenizer="org/model"), plan(tokens=64))
    assert doc["inputs"]["tokens"]["source"] == "tokenizer" and doc["target"]["tokenizer"] == "org/model"
    assert doc["inputs"]["calibration"]["tokenizer_tokens"] == {"min": 64, "max": 64}


# ---- the hub goes through the outbound policy ---------------------------------------------------------

def test_a_hub_the_policy_refuses_is_never_contacted(local_hub, tmp_path):
    from benchmarks.outbound import OutboundPolicy

    only_the_server = OutboundPolicy.from_setting("10.20.0.5:8000")
    with pytest.raises(ConfigError, match="cannot fetch org/model .*refused by the outbound policy") as info:
        resolve_tokenizer("org/model", var_dir=tmp_path, outbound=only_the_server)
    assert "EMBPERF_ALLOWED_TARGETS" in str(info.value)
    assert local_hub == []  # not even a HEAD


def test_the_cli_with_a_narrow_allowlist_sends_nothing_to_the_hub(local_hub, tmp_path, monkeypatch, capsys):
    from benchmarks.cli import main

    monkeypatch.setenv("EMBPERF_VAR_DIR", str(tmp_path))
    with running_simulator(**FAST) as sim:
        port = sim.base_url.rsplit(":", 1)[1].split("/")[0]
        monkeypatch.setenv("EMBPERF_ALLOWED_TARGETS", f"127.0.0.1:{port}")
        code = main(["run", "--url", sim.base_url, "--model", "sim-embed", "--tokenizer", "someorg/somemodel",
                     "--levels", "1", "--duration", "0.5", "--warmup", "0"])
    assert code != 0 and "refused by the outbound policy" in capsys.readouterr().err
    assert local_hub == []


def test_a_hub_answer_past_the_cap_is_not_kept(local_hub, tmp_path):
    from benchmarks.tokens import TokenizerPolicy

    small = TokenizerPolicy(max_bytes=1024)  # the test tokenizer is larger than 1 KiB
    with pytest.raises(ConfigError, match="not a usable tokenizer: it is larger than 0.000977 MiB"):
        resolve_tokenizer("org/model", var_dir=tmp_path, policy=small)
    assert not list((tmp_path / "tokenizers").rglob("tokenizer.json"))


def test_a_fetched_tokenizer_needs_no_contact_even_when_the_hub_is_refused(local_hub, tmp_path):
    from benchmarks.outbound import OutboundPolicy

    path = resolve_tokenizer("org/model", var_dir=tmp_path)
    local_hub.clear()
    refused = OutboundPolicy.from_setting("10.20.0.5:8000")
    assert resolve_tokenizer("org/model", var_dir=tmp_path, outbound=refused) == path
    assert local_hub == []


def test_the_hub_token_stays_with_the_hub(tmp_path, monkeypatch):
    """A redirect elsewhere is followed through the policy, without the token."""
    seen = []
    data = wordpiece().to_str().encode()

    async def cdn(request):
        seen.append(("cdn", request.headers.get("Authorization")))
        return web.Response(body=data)

    async def hub(request):
        seen.append(("hub", request.headers.get("Authorization")))
        raise web.HTTPFound(f"http://localhost:{ports['cdn']}/blob")

    ports = {}
    loop = asyncio.new_event_loop()
    runners = []
    for name, handler, path in (("hub", hub, "/{org}/{name}/resolve/{rev}/{file}"), ("cdn", cdn, "/blob")):
        app = web.Application()
        app.router.add_get(path, handler)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        ports[name] = site._server.sockets[0].getsockname()[1]
        runners.append(runner)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{ports['hub']}")
        monkeypatch.setenv("HF_TOKEN", "hf_secret_token")
        path = resolve_tokenizer("org/model", var_dir=tmp_path)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        for runner in runners:
            loop.run_until_complete(runner.cleanup())
        loop.close()
    assert seen == [("hub", "Bearer hf_secret_token"), ("cdn", None)]
    assert count(Tokenizer.from_file(path), "the quick brown fox") == count(wordpiece(), "the quick brown fox")
