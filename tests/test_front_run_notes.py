"""The run page says where token counts come from, which levels stalled, and which load host was busy."""
import pytest

from benchmarks.document import ADVICE_HOST, stall_note
from benchmarks.simulator import running_simulator
from benchmarks.sweep import run_sweep
from portal.api.ingest import ingest_document
from tests.test_engine_tokens import wordpiece

pytestmark = pytest.mark.django_db

FAST = {"batch_ms": 0, "token_us": 0, "batch_wait_ms": 0, "delay_ms": 5}
PLAN = {"name": "smoke", "levels": [2], "warmup_s": 0.2, "duration_s": 1, "tokens": 64, "dimensions": 32,
        "timeout_s": 5, "abort_error_rate": 1.0, "seed": 1}


def _sweep(tmp_path, *, tokenizer: bool) -> dict:
    target = {"name": "sim", "flavor": "openai", "model": "sim-embed"}
    if tokenizer:
        path = tmp_path / "tokenizer.json"
        wordpiece().save(str(path))
        target["tokenizer"] = str(path)
    with running_simulator(usage="characters", **FAST) as sim:
        return run_sweep({**target, "base_urls": [sim.base_url]}, PLAN)


def test_run_page_says_the_usage_counts_characters_and_tokens_come_from_the_tokenizer(client, owner, team, tmp_path):
    run = ingest_document(_sweep(tmp_path, tokenizer=True), team=team)
    client.force_login(owner)
    html = client.get(run.get_absolute_url()).content.decode()
    assert "usage counts characters; tokens by tokenizer" in html
    assert "the server&#x27;s usage counts characters, not tokens (not used)" in html
    assert run.target.tokenizer == "" and run.target_config["tokenizer"].endswith("tokenizer.json")


def test_run_page_flags_the_estimate(client, owner, team, tmp_path):
    run = ingest_document(_sweep(tmp_path, tokenizer=False), team=team)
    client.force_login(owner)
    html = client.get(run.get_absolute_url()).content.decode()
    assert "tokens estimated (usage counts characters)" in html
    assert "Tokens estimated at 4 characters per token: the server&#x27;s usage counts characters" in html


def test_run_page_shows_the_stall_note_and_the_busy_host(client, owner, team, tmp_path):
    doc = _sweep(tmp_path, tokenizer=False)
    level = doc["levels"][0]
    level["stalls"] = [{"t": 14.0, "duration_s": 2.0}]
    level["notes"] = [stall_note(level)]
    level["client"].update(client_bound=True, bound_by="host", advice=ADVICE_HOST,
                           client_bound_reason="a load process using 4 % of a core waited for a CPU 35 % of the "
                                               "window (limit 20 %), the host's CPUs 100 % busy")
    run = ingest_document(doc, team=team)
    client.force_login(owner)
    html = client.get(run.get_absolute_url()).content.decode()
    assert "stalled 2.0 s at t = 14.0 s" in html
    assert ("the server stopped answering for 2 s at t = 14 s; closed-loop percentiles do not show this; an "
            "open-loop plan at a fixed rate does") in html
    assert "client-bound (load host busy)" in html
    assert "move the load generator to another host" in html


def test_markdown_export_carries_the_token_and_stall_notes(client, owner, team, tmp_path):
    from portal.api.export import levels_markdown

    doc = _sweep(tmp_path, tokenizer=True)
    level = doc["levels"][0]
    level["stalls"] = [{"t": 14.0, "duration_s": 2.0}]
    level["notes"] = [stall_note(level)]
    markdown = levels_markdown(ingest_document(doc, team=team))
    assert "the server's usage counts characters, not tokens (not used)." in markdown
    assert "Concurrency 2: the server stopped answering for 2 s at t = 14 s" in markdown
