"""`python -m benchmarks run|probe`: tables, JSON documents, one-line errors with exit status 2."""
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from benchmarks.cli import main
from benchmarks.simulator import running_simulator

ROOT = Path(__file__).resolve().parent.parent
FAST = {"batch_ms": 0, "token_us": 0, "batch_wait_ms": 0, "delay_ms": 10}


def test_run_prints_the_table_and_writes_the_document(tmp_path, capsys):
    out = tmp_path / "run.json"
    with running_simulator(**FAST) as sim:
        code = main(["run", "--url", sim.base_url, "--model", "sim-embed", "--levels", "1,2", "--duration", "1",
                     "--warmup", "0.2", "--tokens", "16", "--dimensions", "64", "--slo-p99-ms", "500",
                     "--label", "cli test", "--json", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    for column in ("concurrency", "QPS", "avg ms", "P99 ms", "error rate", "tokens/s"):
        assert column in printed.out
    assert "peak" in printed.out and "p99 <= 500 ms up to level 2" in printed.out
    doc = json.loads(out.read_text())
    assert doc["schema"] == "embperf.run/1" and doc["run"]["label"] == "cli test"
    assert [lv["concurrency"] for lv in doc["levels"]] == [1, 2]
    assert doc["levels"][1]["qps"] > doc["levels"][0]["qps"] > 50
    assert doc["plan"]["dimensions"] == 64 and doc["plan"]["duration_s"] == 1


def test_open_loop_run_labels_rates(capsys):
    with running_simulator(**FAST) as sim:
        code = main(["run", "--url", sim.base_url, "--model", "sim-embed", "--mode", "open", "--arrival",
                     "constant", "--levels", "40", "--duration", "1", "--warmup", "0", "--tokens", "16"])
    printed = capsys.readouterr().out
    assert code == 0 and "rate/s" in printed and "40" in printed


def test_repeat_input_is_announced(capsys):
    with running_simulator(**FAST) as sim:
        main(["run", "--url", sim.base_url, "--model", "sim-embed", "--levels", "1", "--duration", "0.5",
              "--warmup", "0", "--tokens", "16", "--repeat-input"])
    assert "cache study" in capsys.readouterr().out


def test_probe_reports_what_the_target_serves(capsys):
    with running_simulator() as sim:
        code = main(["probe", "--url", sim.base_url, "--model", "sim-embed", "--dimensions", "128"])
    assert code == 0
    assert "served model sim-embed, vector length 128" in capsys.readouterr().out


def test_probe_failure_exits_1_with_a_hint(capsys):
    with running_simulator(api_key="k") as sim:
        code = main(["probe", "--url", sim.base_url, "--model", "sim-embed"])
    err = capsys.readouterr().err
    assert code == 1 and "probe failed" in err and "hint: check the API key" in err


def test_run_against_a_broken_target_exits_1(capsys):
    code = main(["run", "--url", "http://127.0.0.1:9/v1", "--model", "m", "--levels", "1", "--duration", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "connection refused" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--model", "m"], "the following arguments are required: --url"),
        (["run", "--url", "http://h/v1", "--model", "m", "--levels", "1,x"], "levels must be numbers"),
        (["run", "--url", "http://h/v1", "--model", "m", "--duration", "-1"], "--duration: The measured duration"),
        (["run", "--url", "http://h/v1", "--model", "m", "--flavor", "grpc"], "invalid choice: 'grpc'"),
        (["run", "--url", "http://h/v1"], "the target needs a model name"),
        (["run", "--url", "h:8000", "--model", "m"], "must start with http:// or https://"),
        (["run", "--url", "http://h", "--model", "m", "--flavor", "tei", "--encoding", "base64"], "base64"),
        (["run", "--url", "http://h/v1", "--model", "m", "--levels", "2.5"], "whole number"),
        (["run", "--url", "http://h/v1", "--model", "m", "--corpus", "/nonexistent/c.txt"], "cannot read corpus"),
        (["run", "--url", "http://h/v1", "--model", "m", "--repeat-input", "--corpus", "c"], "not allowed with"),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("embperf: error: ")
    assert message in err


def test_module_entry_point_dispatches():
    bad = subprocess.run([sys.executable, "-m", "benchmarks", "run", "--levels", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("embperf: error:")
    sim_help = subprocess.run([sys.executable, "-m", "benchmarks", "simulate", "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert sim_help.returncode == 0 and "simulate" in sim_help.stdout


def test_wrong_vectors_above_the_error_limit_exit_3(capsys):
    with running_simulator(wrong_dimensions_rate=0.2, **FAST) as sim:
        code = main(["run", "--url", sim.base_url, "--model", "sim-embed", "--levels", "2", "--duration", "1",
                     "--warmup", "0", "--tokens", "16", "--dimensions", "64", "--seed", "1"])
    printed = capsys.readouterr()
    assert code == 3, printed.out
    assert "verdict failed: error rate <= 1 % breached at level 2" in printed.err


def test_max_error_rate_lets_a_tolerated_error_rate_pass(capsys):
    with running_simulator(wrong_dimensions_rate=0.2, **FAST) as sim:
        code = main(["run", "--url", sim.base_url, "--model", "sim-embed", "--levels", "2", "--duration", "1",
                     "--warmup", "0", "--tokens", "16", "--dimensions", "64", "--max-error-rate", "0.5"])
    assert code == 0, capsys.readouterr().err


def test_a_sweep_the_abort_policy_stopped_exits_3(capsys):
    with running_simulator(**FAST) as sim:
        # Every request fails from 1.5 s on: after the probe and calibration, inside the first level.
        timer = threading.Timer(1.5, lambda: setattr(sim.config, "error_rate", 1.0))
        timer.start()
        try:
            code = main(["run", "--url", sim.base_url, "--model", "sim-embed", "--levels", "1,2", "--duration", "6",
                         "--warmup", "0", "--tokens", "16", "--abort-window", "1", "--max-error-rate", "1"])
        finally:
            timer.cancel()
    printed = capsys.readouterr()
    assert code == 3, printed.out
    assert "the abort policy stopped the sweep at level 1" in printed.err


def test_an_outage_is_named_and_exits_3(capsys):
    with running_simulator(**FAST) as sim:
        timer = threading.Timer(1.5, sim.refuse_now, args=(4.0,))
        timer.start()
        try:
            code = main(["run", "--url", sim.base_url, "--model", "sim-embed", "--levels", "2,4", "--duration", "6",
                         "--warmup", "0", "--tokens", "16", "--abort-window", "1"])
        finally:
            timer.cancel()
    printed = capsys.readouterr()
    assert code == 3, printed.out
    assert "level 0: the target refused connections for" in printed.out
    assert "the abort policy stopped the sweep at level 2" in printed.err


def test_a_server_that_dies_mid_sweep_fails_the_verdict_and_exits_3(capsys):
    with running_simulator(**FAST) as sim:
        def kill_once_measuring():
            # The condition the test needs, measured: calibration is over and the first level is running.
            deadline = threading.Event()
            while sim.stats.requests_ok < 30 and not deadline.wait(0.01):
                pass
            sim.refuse_now(600)

        killer = threading.Thread(target=kill_once_measuring, daemon=True)
        killer.start()
        code = main(["run", "--url", sim.base_url, "--model", "sim-embed", "--levels", "1,2", "--duration", "2",
                     "--warmup", "0", "--tokens", "16", "--dimensions", "64", "--threshold", "p99_ms <= 60000"])
        killer.join(5)
    printed = capsys.readouterr()
    assert code == 3, printed.out
    assert "embperf: verdict failed: target unreachable for" in printed.err
    assert "embperf: verdict failed: error rate <= 1 % breached at level" in printed.err
    assert "verdict: failed: " in printed.out
    assert "left out of the peak, knee and SLO level (error rate above its threshold): level " in printed.out
