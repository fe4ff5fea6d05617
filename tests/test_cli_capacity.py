"""`python -m benchmarks capacity`: the search as it goes, the answer, and its exit status."""
import json

import pytest

from benchmarks import capacity
from benchmarks.cli import EXIT_CLIENT_BOUND, EXIT_NO_CAPACITY, main
from benchmarks.simulator import running_simulator

# Batches of at most 10 requests of 32 tokens, 200 ms each: about 50 requests/s at most.
SERVER = {"batch_ms": 200, "batch_wait_ms": 1, "token_us": 0, "max_batch_tokens": 336, "native_dimensions": 16}


def argv(sim, *extra):
    return ["capacity", "--url", sim.base_url, "--model", "sim-embed", "--tokens", "32", "--dimensions", "16",
            "--repeat-input", "--arrival", "constant", "--duration", "1", "--warmup", "0.3", "--seed", "2", *extra]


@pytest.fixture
def server_bound(monkeypatch):
    # The shared test host may make any level client-bound; these tests are about the server's answer.
    monkeypatch.setattr(capacity, "client_bound", lambda level: False)


def test_capacity_prints_each_level_and_the_answer(tmp_path, capsys, server_bound, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # room for every column of the table
    out = tmp_path / "capacity.json"
    with running_simulator(**SERVER) as sim:
        code = main(argv(sim, "--slo-p99-ms", "800", "--max-load", "20", "--json", str(out)))
    printed = capsys.readouterr()
    assert code == 0, printed.err
    doc = json.loads(out.read_text())
    cap = doc["capacity"]
    # 20 req/s is well within the server's pace (below it a request waits at most 2 batches, 400 ms):
    # the highest load allowed passed.
    assert cap["status"] == "max_load" and cap["load"] == 20
    # The search as it went, one line per level on stderr, with why each load was chosen.
    assert printed.err.count("-> pass") == len(doc["levels"]) == 5
    assert "synchronous: the unloaded latency" in printed.err and "passed: twice that" in printed.err
    for column in ("step", "phase", "goodput/s", "SLO"):
        assert column in printed.out
    assert "capacity: 20 req/s at p99 <= 800 ms, error rate <= 1.00 %\n" in printed.out
    # The top of the allowed range passed twice before it counted.
    assert [lv["rate"] for lv in doc["levels"]].count(20) == 2 and cap["confirmed"] is True
    assert "search max load: the highest load the plan allows (20 req/s) met the SLO" in printed.out


def test_no_load_meeting_the_slo_exits_4(capsys, server_bound):
    with running_simulator(**SERVER) as sim:
        code = main(argv(sim, "--slo-p99-ms", "50"))
    printed = capsys.readouterr()
    assert code == EXIT_NO_CAPACITY == 4
    assert "capacity: no load met the SLO (p99 <= 50 ms" in printed.out
    assert "one request at a time already breaks the SLO: p99" in printed.out
    assert "no load met the SLO" in printed.err


def test_a_client_bound_search_exits_5(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(capacity, "client_bound", lambda level: True)
    with running_simulator(**SERVER) as sim:
        code = main(argv(sim, "--slo-p99-ms", "500"))
    printed = capsys.readouterr()
    assert code == EXIT_CLIENT_BOUND == 5
    assert "binding constraint: client" in printed.out and "client-bound" in printed.out
    assert "capacity: not measured: the client was the limit before any load passed" in printed.out
    assert "the client was the limit at concurrency 1" in printed.out
    assert "the client, not the server, was the limit; the server's capacity is unknown" in printed.err


@pytest.mark.parametrize(("extra", "message"), [
    ((), "--slo-p99-ms: A capacity search needs an SLO"),
    (("--slo-p99-ms", "100", "--mode", "closed", "--max-load", "5000"),
     "--max-load: The capacity search's highest load may be at most 4096 concurrency"),
    (("--slo-p99-ms", "100", "--trials", "0"), "--trials: Trials at the capacity boundary must be at least 1"),
    (("--slo-p99-ms", "100", "--precision", "0"), "--precision: The capacity precision must be greater than 0"),
])
def test_bad_capacity_arguments_give_one_line_and_exit_2(extra, message, capsys):
    code = main(["capacity", "--url", "http://127.0.0.1:9/v1", "--model", "m", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
