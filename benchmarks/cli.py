"""The command line: `python -m benchmarks run ...`, `capacity ...` and `probe ...`.

`run` sweeps the levels with live progress on stderr, prints the result table on stdout and can
write the full result document (`--json`). Bad arguments print one line and exit with 2; a target
that does not work prints what went wrong and exits with 1; a sweep that ran but whose figures a CI
job must not accept (its verdict is failed: a threshold was breached, e.g. a level's error rate is
above `--max-error-rate`, the target refused connections, or the abort policy stopped it) exits with 3.
`capacity` searches for the highest load that meets an SLO (docs/capacity.md), printing each level as
the search chooses it and then the answer; it exits with 4 when no load met the SLO and 5 when the
client, not the server, was the limit. Ctrl-C stops the sweep and keeps the levels that finished (a
second Ctrl-C quits at once).
"""
import argparse
import json
import os
import signal
import sys

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from benchmarks import __version__, push
from benchmarks.argtypes import fraction, number, whole_number
from benchmarks.control import CancelToken
from benchmarks.document import decode_note, level_load, token_notes
from benchmarks.errors import ConfigError, SweepError
from benchmarks.flavors import FLAVORS
from benchmarks.numbers import figure, percent
from benchmarks.plan import PLAN_DEFAULTS, FieldErrors, PlanLimits, normalize_plan

D = PLAN_DEFAULTS  # the plan rule's defaults are the command line's defaults

# Plan field -> the option that sets it, so a refused value names what the user typed.
PLAN_OPTIONS = {
    "mode": "--mode", "levels": "--levels", "arrival": "--arrival", "max_in_flight": "--max-in-flight",
    "warmup_s": "--warmup", "duration_s": "--duration", "tokens": "--tokens", "batch": "--batch",
    "dimensions": "--dimensions", "encoding": "--encoding", "timeout_s": "--timeout",
    "abort_error_rate": "--abort-error-rate", "abort_window_s": "--abort-window", "slo_p99_ms": "--slo-p99-ms",
    "input": "--repeat-input", "corpus": "--corpus", "processes": "--processes", "seed": "--seed",
    "base_urls": "--url", "metrics_urls": "--metrics-url", "thresholds": "--threshold",
    "slo_p90_ms": "--slo-p90-ms", "slo_p50_ms": "--slo-p50-ms", "slo_mean_ms": "--slo-mean-ms",
    "slo_error_rate": "--slo-error-rate", "slo_goodput_share": "--slo-goodput-share",
    "capacity_precision": "--precision", "capacity_trials": "--trials", "capacity_budget_s": "--budget",
    "capacity_max_load": "--max-load", "length": "--length", "tokens_min": "--tokens-min",
    "tokens_max": "--tokens-max", "tokens_sigma": "--tokens-sigma",
    "shape_field": "--shape", "shape_values": "--shape",
}

EXIT_FLAWED = 3  # the sweep ran, but its verdict is failed (a threshold breached, unreachable, aborted)
EXIT_NO_CAPACITY = 4  # a capacity search found no load that meets the SLO
EXIT_CLIENT_BOUND = 5  # a capacity search stopped because the client, not the server, was the limit
DEFAULT_MAX_ERROR_RATE = 0.01


class UsageError(Exception):
    """A bad command-line argument (exit status 2)."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `embperf: error: <what>` and exit status 2."""

    def error(self, message: str):
        raise UsageError(message)


def _levels(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels must be numbers separated by commas, not {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one level")
    return [int(v) if v == int(v) else v for v in values]


def _shape(text: str) -> tuple[str, list]:
    """--shape FIELD=V1,V2,...: the field a shape axis sweeps and its values (the plan rule checks them)."""
    field, sep, values = text.partition("=")
    parts = [part.strip() for part in values.split(",") if part.strip()]
    if not sep or not field.strip() or not parts:
        raise argparse.ArgumentTypeError(f"--shape takes a field and its values, e.g. tokens=32,128,512 or "
                                         f"encoding=float,base64; not {text!r}")
    return field.strip().lower(), parts


def _gpus(text: str) -> list[int]:
    if text.strip().lower() == "all":
        return []
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus takes indices like 0,1 (or 'all'), not {text!r}") from None


def _add_target_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("target")
    group.add_argument("--url", action="append", required=True, metavar="URL",
                       help="base URL, e.g. http://127.0.0.1:30000/v1 for OpenAI-compatible servers; "
                            "repeat for replicas (used round-robin)")
    group.add_argument("--model", default="", help="model name as the server knows it")
    group.add_argument("--flavor", choices=sorted(FLAVORS), default="openai",
                       help="API flavor: openai (POST {url}/embeddings), tei (POST {url}/embed), "
                            "ollama (POST {url}/api/embed); default openai")
    group.add_argument("--api-key", default=os.environ.get("EMBPERF_API_KEY"),
                       help="Bearer key (default: $EMBPERF_API_KEY)")
    group.add_argument("--tokenizer", metavar="ID_OR_FILE",
                       help="the model's tokenizer: a Hugging Face model id (fetched once) or a tokenizer.json; "
                            "tokens are then counted by it, not taken from the server's usage")
    group.add_argument("--dimensions", type=whole_number, help="request this many dimensions (matryoshka)")
    group.add_argument("--encoding", choices=("float", "base64"), default="float",
                       help="response encoding (base64 for the openai flavor only); default float")
    group.add_argument("--timeout", type=number, default=D["timeout_s"],
                       help=f"per-request timeout, s (default {D['timeout_s']:g})")


def _add_run_parser(sub) -> argparse.ArgumentParser:
    run = sub.add_parser("run", help="sweep load levels against a target",
                         description="Sweep load levels against an embedding server and report each level.")
    _add_target_arguments(run)
    plan = run.add_argument_group("plan")
    plan.add_argument("--levels", type=_levels, default=[1],
                      help="concurrencies (closed loop) or rates in requests/s (open loop), e.g. 1,4,8,16")
    plan.add_argument("--mode", choices=("closed", "open"), default=D["mode"],
                      help="closed: fixed requests in flight; open: fixed arrival rate (default closed)")
    _add_load_arguments(plan)
    plan.add_argument("--slo-p99-ms", type=number, help="p99 latency objective, ms")
    plan.add_argument("--max-error-rate", type=fraction, default=DEFAULT_MAX_ERROR_RATE,
                      help="the error-rate threshold of every level: exit with status 3 when a level's error "
                           "rate is above this (0..1, default 0.01; 1 never)")
    plan.add_argument("--shape", type=_shape, metavar="FIELD=VALUES",
                      help="sweep one request shape across the levels, a grid run shape by shape: "
                           "tokens=32,128,512, batch=1,8,32, encoding=float,base64 or dimensions=256,1024 "
                           "(2 to 16 values; shapes × levels at most EMBPERF_MAX_LEVELS)")
    plan.add_argument("--threshold", action="append", default=[], metavar="RULE",
                      help="a pass/fail threshold, e.g. 'p99_ms <= 500', 'qps >= 200 at 16, 32' "
                           "(figures: p50_ms p90_ms p99_ms mean_ms error_rate qps tokens_per_s); repeatable; "
                           "a breached one fails the verdict (exit status 3)")
    _add_output_arguments(run)
    return run


def _add_capacity_parser(sub) -> argparse.ArgumentParser:
    cap = sub.add_parser("capacity", help="find the highest load that meets an SLO",
                         description="Search for the highest arrival rate (open loop, the default) or concurrency "
                                     "(closed loop) whose level meets the SLO: a synchronous level, an exponential "
                                     "probe up to the first failure, then bisection (docs/capacity.md).")
    _add_target_arguments(cap)
    plan = cap.add_argument_group("plan")
    plan.add_argument("--mode", choices=("closed", "open"), default="open",
                      help="open: search arrival rates (default); closed: search concurrencies")
    _add_load_arguments(plan)
    slo = cap.add_argument_group("SLO (a level passes when every limit given holds)")
    slo.add_argument("--slo-p99-ms", type=number, help="p99 latency limit, ms")
    slo.add_argument("--slo-p90-ms", type=number, help="p90 latency limit, ms")
    slo.add_argument("--slo-p50-ms", type=number, help="p50 latency limit, ms")
    slo.add_argument("--slo-mean-ms", type=number, help="mean latency limit, ms")
    slo.add_argument("--slo-error-rate", type=fraction,
                     help=f"highest error rate (0..1, default {DEFAULT_MAX_ERROR_RATE:g})")
    slo.add_argument("--slo-goodput-share", type=fraction,
                     help="least share of requests (0..1) whose latency met the latency limit")
    search = cap.add_argument_group("search")
    search.add_argument("--precision", type=number, default=D["capacity_precision"],
                        help="stop when the lowest fail is within this share of the highest pass "
                             f"(closed loop: or 1); default {D['capacity_precision']:g}")
    search.add_argument("--trials", type=whole_number, default=D["capacity_trials"],
                        help=f"passes a load needs at the boundary (default {D['capacity_trials']})")
    search.add_argument("--budget", type=number,
                        help="time budget of the search, s (default: EMBPERF_MAX_RUN_SECONDS)")
    search.add_argument("--max-load", type=number,
                        help="highest rate or concurrency to try (default: EMBPERF_MAX_RATE or "
                             "EMBPERF_MAX_CONCURRENCY)")
    _add_output_arguments(cap)
    return cap


def _add_load_arguments(plan) -> None:
    """The plan options `run` and `capacity` share: how each level loads the server."""
    plan.add_argument("--arrival", choices=("constant", "poisson"), default=D["arrival"],
                      help="open loop arrivals (default poisson)")
    plan.add_argument("--max-in-flight", type=whole_number,
                      help="open loop: cap on requests in flight (default: EMBPERF_MAX_CONCURRENCY)")
    plan.add_argument("--duration", type=number, default=D["duration_s"],
                      help=f"measured seconds per level (default {D['duration_s']:g})")
    plan.add_argument("--warmup", type=number, default=D["warmup_s"],
                      help=f"warm-up seconds per level, excluded (default {D['warmup_s']:g})")
    plan.add_argument("--tokens", type=whole_number, default=D["tokens"],
                      help=f"input tokens per text; the median of a log-normal length (default {D['tokens']})")
    plan.add_argument("--length", choices=("fixed", "uniform", "lognormal"), default=D["length"],
                      help="how long each unique text is: fixed (every text --tokens), uniform (drawn from "
                           "--tokens-min..--tokens-max) or lognormal (median --tokens, spread --tokens-sigma); "
                           "default fixed")
    plan.add_argument("--tokens-min", type=whole_number,
                      help="uniform length: the shortest text, tokens (default half of --tokens)")
    plan.add_argument("--tokens-max", type=whole_number,
                      help="uniform length: the longest text, tokens (default 1.5 times --tokens)")
    plan.add_argument("--tokens-sigma", type=number,
                      help="lognormal length: sigma of the log of the count, (0, 3] (default 0.5)")
    plan.add_argument("--batch", type=whole_number, default=D["batch"],
                      help=f"texts per request (default {D['batch']})")
    plan.add_argument("--processes", type=whole_number, default=D["processes"],
                      help=f"load processes (default {D['processes']})")
    plan.add_argument("--abort-error-rate", type=number, default=D["abort_error_rate"],
                      help="stop a level when the error rate stays above this "
                           f"(0..1, default {D['abort_error_rate']:g}) ...")
    plan.add_argument("--abort-window", type=number, default=D["abort_window_s"],
                      help=f"... for this many seconds (default {D['abort_window_s']:g})")
    inputs = plan.add_mutually_exclusive_group()
    inputs.add_argument("--repeat-input", action="store_true",
                        help="send one identical text (a cache study, labelled as such)")
    inputs.add_argument("--corpus", metavar="FILE", help="texts to send: one per line, or JSONL with 'text'")
    plan.add_argument("--seed", type=int, help="seed for inputs and arrivals (default: random)")


def _add_output_arguments(run) -> None:
    tele = run.add_argument_group("telemetry")
    tele.add_argument("--gpus", type=_gpus, help="local GPU indices to sample with NVML, e.g. 0,1 (or 'all')")
    tele.add_argument("--metrics-url", action="append", default=[], metavar="URL",
                      help="Prometheus /metrics URL to scrape (DCGM exporter, vLLM, SGLang, TEI); repeatable")
    out = run.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write the result document (embperf.run/1) here")
    out.add_argument("--label", default="", help="label stored in the result document")
    out.add_argument("--quiet", action="store_true", help="no live progress")
    push.add_push_arguments(run)


def _add_probe_parser(sub) -> argparse.ArgumentParser:
    probe = sub.add_parser("probe", help="send one request and report what the target serves",
                           description="Send one request and report model, vector length, tokens and latency.")
    _add_target_arguments(probe)
    probe.add_argument("--json", action="store_true", help="print the probe result as JSON")
    return probe


def build_parser() -> Parser:
    """The `python -m benchmarks` argument parser (run and probe)."""
    parser = Parser(prog="python -m benchmarks", description="embperf: benchmark text-embedding servers.")
    parser.add_argument("--version", action="version", version=f"embperf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{run,capacity,probe,simulate,gpu-agent}",
                                parser_class=Parser)
    sub.required = True
    _add_run_parser(sub)
    _add_capacity_parser(sub)
    _add_probe_parser(sub)
    sub.add_parser("simulate", help="serve the embedding-server simulator (see: simulate --help)", add_help=False)
    sub.add_parser("gpu-agent", help="export local GPU metrics for a remote worker (see: gpu-agent --help)",
                   add_help=False)
    return parser


def target_from_args(args) -> dict:
    """The engine's target dict from the command line."""
    target = {"name": "cli", "flavor": args.flavor, "base_urls": list(args.url), "model": args.model,
              "engine": "other", "engine_version": "", "launch_config": {},
              "gpus": list(getattr(args, "gpus", None) or []), "metrics_urls": list(getattr(args, "metrics_url", [])),
              }
    if args.api_key:
        target["api_key"] = args.api_key
    if getattr(args, "tokenizer", None):
        target["tokenizer"] = args.tokenizer
    return target


def plan_from_args(args) -> dict:
    """The engine's plan dict from the command line."""
    from benchmarks.inputs import load_corpus

    corpus = load_corpus(args.corpus) if args.corpus else None
    plan = {
        "name": "cli", "mode": args.mode, "levels": getattr(args, "levels", None), "arrival": args.arrival,
        "max_in_flight": args.max_in_flight, "warmup_s": args.warmup, "duration_s": args.duration,
        "tokens": args.tokens, "length": args.length, "tokens_min": args.tokens_min,
        "tokens_max": args.tokens_max, "tokens_sigma": args.tokens_sigma,
        "batch": args.batch, "dimensions": args.dimensions, "encoding": args.encoding,
        "timeout_s": args.timeout, "abort_error_rate": args.abort_error_rate, "abort_window_s": args.abort_window,
        "slo_p99_ms": args.slo_p99_ms,
        "input": "corpus" if corpus else ("repeat" if args.repeat_input else "unique"),
        "corpus": corpus, "processes": args.processes, "keep_samples": False, "seed": args.seed,
        "thresholds": thresholds_from_args(args),
    }
    shape = getattr(args, "shape", None)
    if shape:
        plan.update(shape_field=shape[0], shape_values=shape[1])
    if args.command == "capacity":
        plan.update(search="capacity", slo_p90_ms=args.slo_p90_ms, slo_p50_ms=args.slo_p50_ms,
                    slo_mean_ms=args.slo_mean_ms, slo_error_rate=args.slo_error_rate,
                    slo_goodput_share=args.slo_goodput_share, capacity_precision=args.precision,
                    capacity_trials=args.trials, capacity_budget_s=args.budget, capacity_max_load=args.max_load)
    return plan


def thresholds_from_args(args) -> list:
    """The --threshold rules, plus --max-error-rate as the error-rate rule when none names error_rate
    (`capacity` has neither: its SLO is its rule)."""
    rules = list(getattr(args, "threshold", None) or [])
    max_error_rate = getattr(args, "max_error_rate", None)
    if max_error_rate is not None and not any(rule.strip().lower().startswith("error_rate") for rule in rules):
        rules.append(f"error_rate <= {max_error_rate:g}")
    return rules


def shape_text(shape: dict | None) -> str:
    """A level's shape the way the CLI shows it: "tokens 512", "encoding base64" ('' without an axis)."""
    if not shape:
        return ""
    value = shape["value"]
    return f"{shape['field']} {value if isinstance(value, str) else figure(value)}"


def answers_text(level: dict) -> str:
    """Response size and the client's decode time per answer, for a level's line ('' without them)."""
    answers = level.get("answers") or {}
    if answers.get("bytes_mean") is None:
        return ""
    text = (f", {figure(answers['bytes_mean'] / 1024)} KiB/answer, decode {figure(answers['decode_ms_mean'])} ms"
            f" ({percent(answers['decode_share'])} of latency)")
    return text + (" - decode-bound (client)" if decode_note(level) else "")


def input_tokens_text(level: dict) -> str:
    """The token counts a length distribution sent, for a level's line ('' for a fixed length)."""
    sent = level.get("input_tokens")
    if not sent or not sent.get("n"):
        return ""
    word = "tokens" if sent["source"] == "tokenizer" else "target tokens"
    return f", {word}/text p50 {figure(sent['p50'])} p90 {figure(sent['p90'])} max {figure(sent['max'])}"


def results_table(document: dict) -> Table:
    """The per-level table: load, QPS, average and p99 latency, error rate, tokens/s."""
    open_loop = document["plan"]["mode"] == "open"
    search = "capacity" in document
    goodput = any("goodput" in level for level in document["levels"])
    table = Table(title=f"embperf: {document['target'].get('model') or document['target']['base_urls'][0]}")
    shaped = any(level.get("shape") for level in document["levels"])
    if search:
        table.add_column("step", justify="right")
        table.add_column("phase")
    if shaped:
        table.add_column(document["plan"].get("shape_field") or "shape", justify="right", no_wrap=True)
    # The figures keep their width on a narrow terminal; the phase and note columns wrap instead.
    table.add_column("rate/s" if open_loop else "concurrency", justify="right", no_wrap=True)
    for name in ("QPS", *(("goodput/s",) if goodput else ()), "avg ms", "P99 ms", "error rate", "tokens/s"):
        table.add_column(name, justify="right", no_wrap=True)
    if search:
        table.add_column("SLO")
    table.add_column("note")
    tokens_short, _ = token_notes(document)
    for level in document["levels"]:
        notes = []
        if level["status"] != "completed":
            notes.append(level["status"])
        if level["client"]["client_bound"]:
            notes.append("client-bound (load host busy)" if level["client"].get("bound_by") == "host"
                         else "client-bound")
        if tokens_short:
            notes.append(tokens_short)
        elif level["tokens_estimated"]:
            notes.append("tokens estimated")
        if level.get("unreachable_s"):
            notes.append(f"refused {level['unreachable_s']:.1f} s")
        for stall in level.get("stalls") or []:
            notes.append(f"stalled {stall['duration_s']:g} s at t = {stall['t']:g} s")
        if decode_note(level):
            notes.append("decode-bound (client)")
        step = level.get("capacity_step") or {}
        load = figure(level_load(level))
        if search and level.get("concurrency") is not None and open_loop:
            load = f"{load} in flight"  # the synchronous level of an open-loop search
        table.add_row(
            *((str(step.get("step", "")), step.get("phase", "")) if search else ()),
            *((shape_value(level.get("shape")),) if shaped else ()),
            load, figure(level["qps"]),
            *((figure((level.get("goodput") or {}).get("per_s")),) if goodput else ()),
            figure(level["latency_ms"]["mean"]),
            figure(level["latency_ms"]["p99"]), percent(level["error_rate"]), figure(level["tokens_per_s"]),
            *((step.get("outcome") or "",) if search else ()),
            ", ".join(notes),
        )
    return table


def shape_value(shape: dict | None) -> str:
    """A shape's value alone, for the table's shape column."""
    if not shape:
        return ""
    return shape["value"] if isinstance(shape["value"], str) else figure(shape["value"])


def shape_lines(document: dict) -> list[str]:
    """One line per shape of a shape axis, with its best cell (summary.shapes)."""
    lines = []
    for shape in document["summary"].get("shapes") or []:
        head = f"{shape_text(shape)}:"
        if shape["peak_qps"] is None:
            lines.append(f"{head} no level counted (each errored, cancelled or not measured)")
            continue
        text = (f"{head} peak {figure(shape['peak_qps'])} req/s at {figure(shape['peak_level'])} "
                f"({figure(shape['peak_texts_per_s'])} texts/s, {figure(shape['peak_tokens_per_s'])} tokens/s, "
                f"p99 {figure(shape['p99_ms_at_peak'])} ms)")
        if shape["knee_level"] is not None:
            text += f"; knee at {figure(shape['knee_level'])}"
        if document["summary"].get("slo_p99_ms") is not None:
            best = shape["slo_max_level"]
            text += (f"; p99 <= {figure(document['summary']['slo_p99_ms'])} ms up to level {figure(best)}"
                     if best is not None else "; no level met the p99 SLO")
        lines.append(text)
    return lines


def capacity_lines(document: dict) -> list[str]:
    """The answer of a capacity search in plain words (docs/capacity.md)."""
    cap = document.get("capacity")
    if not cap:
        return []
    slo = cap["slo"]
    limits = [f"{key[:-3]} <= {figure(value)} ms" for key, value in slo.items() if key.endswith("_ms")]
    if slo.get("error_rate") is not None:
        limits.append(f"error rate <= {percent(slo['error_rate'], 2)}")
    if slo.get("goodput_share") is not None:
        limits.append(f"goodput share >= {percent(slo['goodput_share'], 1)}")
    unit = "req/s" if cap["unit"] == "rate" else "in flight"
    slo_text = ", ".join(limits)
    lines = []
    if cap["load"] is None and cap["status"] == "client_bound":
        lines.append(f"capacity: not measured: the client was the limit before any load passed ({slo_text})")
    elif cap["load"] is None:
        lines.append(f"capacity: no load met the SLO ({slo_text})")
    else:
        f = cap["figures"]
        lines.append(f"capacity: {figure(cap['load'])} {unit} at {slo_text}"
                     + ("" if cap["confirmed"] else f" (passed once, not yet repeated {cap['trials']} times)"))
        lines.append(f"  at capacity: {figure(f['qps'])} req/s, {figure(f['tokens_per_s'])} tokens/s, "
                     f"p50 {figure(f['latency_ms']['p50'])} ms, p99 {figure(f['latency_ms']['p99'])} ms, "
                     f"errors {percent(f['error_rate'], 2)}"
                     + (f", goodput {figure(f['goodput_per_s'])} req/s" if f.get("goodput_per_s") is not None else ""))
    if cap["lowest_fail"] is not None:
        lines.append(f"lowest failing load: {figure(cap['lowest_fail'])} {unit} "
                     f"({'; '.join(cap['lowest_fail_breaches'])})")
    if cap["uncertainty"]:
        lines.append(f"uncertainty: the limit lies between {figure(cap['load'])} and {figure(cap['lowest_fail'])} "
                     f"(+{percent(cap['uncertainty']['share'], 1)})")
    if cap["binding"]:
        lines.append(f"binding constraint: {cap['binding'].replace('_', ' ')}")
    if cap["cliff"]:
        lines.append(f"cliff: {cap['cliff_reason']}")
    lines.append(f"search {cap['status'].replace('_', ' ')}: {cap['reason']} "
                 f"({cap['levels_run']} levels, {cap['elapsed_s']:g} s)")
    return lines


def summary_lines(document: dict) -> list[str]:
    """Plain-words summary of a sweep and everything a reader must know to trust it."""
    summary = document["summary"]
    lines = capacity_lines(document)
    if summary["peak_qps"] is not None:
        lines.append(f"peak {figure(summary['peak_qps'])} req/s at {figure(summary['peak_level'])}")
    # A search's levels run in no order, and a shape axis's knee is each shape's own (its line below).
    if summary["knee_level"] is not None and "capacity" not in document and not summary.get("shapes"):
        lines.append(f"knee at {figure(summary['knee_level'])} (after it, throughput grows < 10 % while p99 grows)")
    if summary["slo_p99_ms"] is not None:
        best = summary["slo_max_level"]
        lines.append(f"p99 <= {figure(summary['slo_p99_ms'])} ms up to level {figure(best)}" if best is not None
                     else f"no level met p99 <= {figure(summary['slo_p99_ms'])} ms")
    lines.extend(shape_lines(document))
    if summary.get("errored_levels"):
        lines.append("left out of the peak, knee and SLO level (error rate above its threshold): level "
                     + ", ".join(figure(load) for load in summary["errored_levels"]))
    if document["inputs"].get("cache_study"):
        lines.append("cache study: every request sent the same text (--repeat-input)")
    lines.extend(token_notes(document)[1])
    for level in document["levels"]:
        if level["client"]["client_bound"]:
            advice = level["client"].get("advice") or "use --processes or a faster client host for this load"
            lines.append(f"level {level['index']}: client-bound ({level['client']['client_bound_reason']}); "
                         f"{advice}")
        if level.get("unreachable_s"):
            lines.append(f"level {level['index']}: the target refused connections for {level['unreachable_s']:.1f} s "
                         "of the window")
        for note in level.get("notes") or []:
            lines.append(f"level {level['index']}: {note}")
        for cls, message in level["error_examples"].items():
            lines.append(f"level {level['index']}: {level['errors'][cls]} x {cls}, e.g. {message}")
    for note in document.get("telemetry_notes") or []:
        lines.append(note)
    run = document["run"]
    if run["status"] != "succeeded" or run["status_reason"]:
        lines.append(f"run {run['status']}: {run['status_reason']}".rstrip(": "))
    if run.get("verdict"):
        lines.append(f"verdict: {run['verdict']}" + (": " + "; ".join(run.get("verdict_reasons") or [])
                                                     if run.get("verdict_reasons") else ""))
    return lines


class LiveView:
    """Live progress on stderr: one line for the running level (rich), one printed line per level."""

    def __init__(self, console: Console, mode: str, enabled: bool) -> None:
        self.console = console
        self.unit = "rate" if mode == "open" else "concurrency"
        self.live = Live(Text(""), console=console, refresh_per_second=4, transient=True) if enabled else None

    def __enter__(self):
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)

    def progress(self, p: dict) -> None:
        if self.live is None:
            return
        second = p.get("second") or {}
        text = ((f"{shape_text(p['shape'])}  " if p.get("shape") else "")
                + f"level {p['level_index'] + 1}/{p['levels_total']}  {self.unit} {figure(p['load'])}  {p['phase']:<7}"
                f"  {p['level_elapsed_s']:5.1f}/{p['level_total_s']:g} s"
                f"  ok {p['completed']:,}  failed {p['failed']:,}")
        if second:
            text += (f"  last second: {second['completed']} done, p50 {figure(second['p50_ms'])} ms,"
                     f" p99 {figure(second['p99_ms'])} ms, {second['in_flight']} in flight")
        text += f"  eta {p['run_eta_s']:.0f} s"
        self.live.update(Text(text))

    def level(self, level: dict) -> None:
        unit = "concurrency" if level.get("concurrency") is not None else "rate"
        goodput = level.get("goodput")
        text = ((f"{shape_text(level['shape'])}: " if level.get("shape") else "")
                + f"level {level['index'] + 1} ({unit} {figure(level_load(level))}): "
                f"{figure(level['qps'])} req/s, p99 {figure(level['latency_ms']['p99'])} ms, "
                f"errors {percent(level['error_rate'])}"
                + (f", goodput {figure(goodput['per_s'])} req/s" if goodput else "")
                + answers_text(level) + input_tokens_text(level)
                + (f" [{level['status']}]" if level["status"] != "completed" else ""))
        step = level.get("capacity_step")
        if step:
            text += f" -> {step['outcome'] or 'not judged'} ({step['phase']}: {step['reason']})"
            if step["breaches"]:
                text += f"; {'; '.join(step['breaches'])}"
        self.console.print(text, markup=False, highlight=False)


def _build_telemetry(args):
    if args.gpus is None and not args.metrics_url:
        return None
    from benchmarks.telemetry import build_telemetry

    return build_telemetry(gpus=args.gpus, metrics_urls=args.metrics_url or None)


def write_document(path: str, document: dict) -> None:
    """Write the result document as JSON."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(document, fh, indent=2)
        fh.write("\n")


def _sweep(args, err: Console) -> dict | int:
    """Run the plan the arguments give, with live progress: the document, or 1 when the sweep failed
    (the partial document is still written with --json)."""
    from benchmarks.sweep import check_combination, normalize_target, run_sweep

    target = target_from_args(args)
    plan = plan_from_args(args)
    push.apply_names(args, target, plan)
    limits = PlanLimits.from_environ()
    check_combination(normalize_target(target), normalize_plan(plan, limits))
    telemetry = _build_telemetry(args)
    token = CancelToken()
    interrupts = []

    def on_interrupt(signum, frame):
        interrupts.append(signum)
        if len(interrupts) > 1:
            raise KeyboardInterrupt
        err.print("stopping; the finished levels are kept (Ctrl-C again to quit at once)")
        token.cancel()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    view = LiveView(err, args.mode, enabled=not args.quiet and err.is_terminal)
    try:
        with view:
            document = run_sweep(target, plan, cancel=token, on_progress=view.progress,
                                 on_level=None if args.quiet else view.level, telemetry=telemetry,
                                 run_info={"label": args.label}, limits=limits)
    except ConfigError:
        raise
    except SweepError as exc:
        partial = getattr(exc, "document", None)
        if partial is not None and args.json:
            write_document(args.json, partial)
        err.print(f"embperf: {exc}", markup=False, highlight=False)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
    return document


def _report(args, document: dict, out: Console, err: Console) -> int | None:
    """Print the table and summary, write --json, push; 1 when the push failed or the run failed,
    130 when it was cancelled, None when the run succeeded."""
    if document["levels"]:
        out.print(results_table(document))
    for line in summary_lines(document):
        out.print(line, markup=False, highlight=False)
    if args.json:
        write_document(args.json, document)
        out.print(f"result document written to {args.json}", markup=False, highlight=False)
    if not push.push_from_cli(args, document, out, err):
        return 1
    status = document["run"]["status"]
    if status != "succeeded":
        return 130 if status == "cancelled" else 1
    return None


def command_run(args, out: Console, err: Console) -> int:
    """`run`: sweep, show progress, print the table; exit 0 on success, 1 when the sweep failed,
    130 when it was stopped with Ctrl-C (the finished levels are still printed and written)."""
    document = _sweep(args, err)
    if isinstance(document, int):
        return document
    status = _report(args, document, out, err)
    if status is not None:
        return status
    flaws = document["run"].get("verdict_reasons") or []
    for flaw in flaws:
        err.print(f"embperf: verdict failed: {flaw}", markup=False, highlight=False)
    return EXIT_FLAWED if document["run"].get("verdict") == "failed" else 0


def command_capacity(args, out: Console, err: Console) -> int:
    """`capacity`: search for the highest load that meets the SLO, printing each level as it is
    chosen and then the answer. Exit 0 when a capacity was found, 4 when no load met the SLO, 5 when
    the client was the limit, and as `run` for a failed or cancelled search."""
    document = _sweep(args, err)
    if isinstance(document, int):
        return document
    status = _report(args, document, out, err)
    if status is not None:
        return status
    cap = document["capacity"]
    if cap["status"] == "client_bound":
        err.print("embperf: the client, not the server, was the limit; "
                  + ("the capacity is at least the highest pass" if cap["load"] is not None
                     else "the server's capacity is unknown"), markup=False, highlight=False)
        return EXIT_CLIENT_BOUND
    if cap["load"] is None:
        err.print("embperf: no load met the SLO", markup=False, highlight=False)
        return EXIT_NO_CAPACITY
    return 0


def command_probe(args, out: Console, err: Console) -> int:
    """`probe`: one request; 0 when the target works, 1 when it does not."""
    from benchmarks.probe import probe

    target = target_from_args(args)
    limits = PlanLimits.from_environ()
    checked = normalize_plan({"dimensions": args.dimensions, "encoding": args.encoding, "timeout_s": args.timeout},
                             limits)
    result = probe(target, dimensions=checked["dimensions"], encoding=checked["encoding"],
                   timeout_s=checked["timeout_s"], max_vector_length=limits.max_vector_length)
    if args.json:
        out.print_json(json.dumps(result))
        return 0 if result["ok"] else 1
    if result["ok"]:
        out.print(f"ok: {result['url']} served model {result['served_model'] or '(not reported)'}, "
                  f"vector length {result['vector_length']}, prompt tokens {result['prompt_tokens']}, "
                  + (f"accepts up to {result['max_input_tokens']} tokens, " if result.get("max_input_tokens") else "")
                  + f"{result['latency_ms']:.1f} ms", markup=False, highlight=False)
        return 0
    err.print(f"probe failed: {result['error']}", markup=False, highlight=False)
    if result.get("hint"):
        err.print(f"hint: {result['hint']}", markup=False, highlight=False)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m benchmarks run|probe`; returns the exit status."""
    out = Console(soft_wrap=True)
    err = Console(stderr=True, soft_wrap=True)
    try:
        args = build_parser().parse_args(argv)
        if args.command == "run":
            return command_run(args, out, err)
        if args.command == "capacity":
            return command_capacity(args, out, err)
        if args.command == "probe":
            return command_probe(args, out, err)
        raise UsageError(f"unknown command {args.command!r}")
    except FieldErrors as exc:
        print(f"embperf: error: {option_errors(exc)}", file=sys.stderr)
        return 2
    except (UsageError, ConfigError) as exc:
        print(f"embperf: error: {exc}", file=sys.stderr)
        return 2


def option_errors(exc: FieldErrors) -> str:
    """The plan rule's messages, each after the option that set the refused value."""
    return " ".join(f"{PLAN_OPTIONS.get(field, field)}: {' '.join(messages)}"
                     for field, messages in exc.errors.items())
