"""Exports of a run: the result document (embperf.run/1, `Run.to_document()`), a CSV row per level,
a Markdown table. Each is written from the run's document, so all of them say the same.

The column names of the CSV are a public contract (docs/api.md): add columns at the end,
never rename or drop one.
"""
from benchmarks.capacity import summary_text as capacity_summary
from benchmarks.document import level_load, token_notes
from benchmarks.numbers import MISSING, figure, percent
from benchmarks.tables import csv_text, markdown_table, md_escape
from portal.sweeps.documents import gpu_totals
from portal.sweeps.models import Run


# (column, function of (run document, level document)) -- the CSV export, one row per level.
def _section(section, key):
    return lambda doc, lv: (doc.get(section) or {}).get(key)


def _level(key):
    return lambda doc, lv: lv.get(key)


def _latency(key):
    return lambda doc, lv: (lv.get("latency_ms") or {}).get(key)


def _service(key):
    return lambda doc, lv: (lv.get("service_ms") or {}).get(key)


def _error(key):
    return lambda doc, lv: (lv.get("errors") or {}).get(key, 0)


def _gpu(key):
    return lambda doc, lv: gpu_totals(lv)[key]


LEVEL_COLUMNS = (
    ("run_id", _section("run", "id")),
    ("run_uuid", _section("run", "uuid")),
    ("run_label", _section("run", "label")),
    ("run_status", _section("run", "status")),
    ("target", _section("target", "name")),
    ("model", _section("target", "model")),
    ("engine", _section("target", "engine")),
    ("engine_version", _section("target", "engine_version")),
    ("plan", _section("plan", "name")),
    ("mode", _section("plan", "mode")),
    ("level_index", _level("index")),
    ("concurrency", _level("concurrency")),
    ("rate", _level("rate")),
    ("level_status", _level("status")),
    ("duration_s", _level("duration_s")),
    ("requests_started", _level("requests_started")),
    ("requests_ok", _level("requests_ok")),
    ("requests_failed", _level("requests_failed")),
    ("in_flight_at_end", _level("in_flight_at_end")),
    ("qps", _level("qps")),
    ("texts_per_s", _level("texts_per_s")),
    ("tokens_per_s", _level("tokens_per_s")),
    ("tokens_estimated", _level("tokens_estimated")),
    ("latency_mean_ms", _latency("mean")),
    ("latency_p50_ms", _latency("p50")),
    ("latency_p90_ms", _latency("p90")),
    ("latency_p95_ms", _latency("p95")),
    ("latency_p99_ms", _latency("p99")),
    ("latency_p999_ms", _latency("p999")),
    ("latency_max_ms", _latency("max")),
    ("service_p50_ms", _service("p50")),
    ("service_p99_ms", _service("p99")),
    ("error_rate", _level("error_rate")),
    ("errors_http_4xx", _error("http_4xx")),
    ("errors_http_429", _error("http_429")),
    ("errors_http_5xx", _error("http_5xx")),
    ("errors_timeout", _error("timeout")),
    ("errors_connect_error", _error("connect_error")),
    ("errors_invalid_response", _error("invalid_response")),
    ("client_bound", lambda doc, lv: bool((lv.get("client") or {}).get("client_bound"))),
    ("gpu_util_mean", _gpu("gpu_util_mean")),
    ("gpu_memory_used_peak_mib", _gpu("vram_peak_mib")),
    ("gpu_power_mean_w", _gpu("power_mean_w")),
    ("joules_per_1k_tokens", lambda doc, lv: (lv.get("energy") or {}).get("joules_per_1k_tokens")),
    ("run_aborted_at_level", _section("run", "aborted_at_level")),
    ("unreachable_s", _level("unreachable_s")),
    ("run_resumed_from", lambda doc, lv: (doc["run"].get("resumed_from") or {}).get("id")),
    ("run_verdict", _section("run", "verdict")),
    ("run_verdict_reasons", lambda doc, lv: "; ".join(doc["run"].get("verdict_reasons") or [])),
    ("run_unreachable_s", _section("run", "unreachable_s")),
    ("goodput_per_s", lambda doc, lv: (lv.get("goodput") or {}).get("per_s")),
    ("goodput_share", lambda doc, lv: (lv.get("goodput") or {}).get("share")),
    ("goodput_limit_ms", lambda doc, lv: (lv.get("goodput") or {}).get("limit_ms")),
    ("capacity_step", lambda doc, lv: (lv.get("capacity_step") or {}).get("step")),
    ("capacity_phase", lambda doc, lv: (lv.get("capacity_step") or {}).get("phase")),
    ("capacity_outcome", lambda doc, lv: (lv.get("capacity_step") or {}).get("outcome")),
    ("shape_field", lambda doc, lv: (lv.get("shape") or {}).get("field")),
    ("shape_value", lambda doc, lv: (lv.get("shape") or {}).get("value")),
    ("answer_bytes_mean", lambda doc, lv: (lv.get("answers") or {}).get("bytes_mean")),
    ("answer_decode_ms_mean", lambda doc, lv: (lv.get("answers") or {}).get("decode_ms_mean")),
    ("answer_decode_share", lambda doc, lv: (lv.get("answers") or {}).get("decode_share")),
    ("input_tokens_p50", lambda doc, lv: (lv.get("input_tokens") or {}).get("p50")),
    ("input_tokens_p90", lambda doc, lv: (lv.get("input_tokens") or {}).get("p90")),
    ("input_tokens_max", lambda doc, lv: (lv.get("input_tokens") or {}).get("max")),
    ("run_capacity", _section("capacity", "load")),
    ("run_capacity_lowest_fail", _section("capacity", "lowest_fail")),
    ("run_capacity_binding", _section("capacity", "binding")),
)
LEVEL_COLUMN_NAMES = tuple(name for name, _ in LEVEL_COLUMNS)


def levels_csv(runs: list[Run]) -> str:
    """One CSV row per level of each run, header first (floats exact, text cells formula-safe)."""
    rows = [LEVEL_COLUMN_NAMES]
    for run in runs:
        doc = run.to_document()
        rows.extend([fn(doc, level) for _, fn in LEVEL_COLUMNS] for level in doc["levels"])
    return csv_text(rows)


def _with_unit(value, unit: str) -> str:
    text = figure(value)
    return text if text == MISSING else f"{text} {unit}"


def levels_markdown(run: Run) -> str:
    """The run's levels as a Markdown table, with a title line naming target, plan and status."""
    doc = run.to_document()
    section = doc["run"]
    load_name = "Rate (req/s)" if doc["plan"].get("mode") == "open" else "Concurrency"
    if doc["plan"].get("shape_field"):
        load_name = f"{doc['plan']['shape_field'].capitalize()} · {load_name.lower()}"
    title = (
        f"**Run {section['id']}** {md_escape(section['label']) + ' ' if section['label'] else ''}"
        f"– target {md_escape(doc['target'].get('name', '?'))}, "
        f"plan {md_escape(doc['plan'].get('name', '?'))}, {section['status']}"
        + (f", verdict **{section['verdict']}**" if section.get("verdict") else "")
    )
    # Goodput beside req/s when the plan has an SLO (a table without one reads as before).
    limits = {(lv.get("goodput") or {}).get("limit_ms") for lv in doc["levels"]} - {None}
    goodput_head = [f"goodput/s (≤ {figure(min(limits))} ms)"] if limits else []
    header = [load_name, "req/s", *goodput_head, "texts/s", "tokens/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
              "errors", "GPU util", "power W"]
    preamble = []
    if section.get("verdict_reasons"):
        preamble += ["Verdict failed: " + "; ".join(md_escape(r) for r in section["verdict_reasons"]) + ".", ""]
    if section.get("aborted_at_level") is not None:
        preamble += [f"**Stopped by the abort policy at level {figure(section['aborted_at_level'])}**: the levels "
                     "after it were not measured.", ""]
    if doc.get("capacity"):
        preamble += [f"**Capacity**: {md_escape(capacity_summary(doc['capacity']))}.", ""]
    resumed = section.get("resumed_from")
    if resumed:
        loads = ", ".join(figure(load) for load in resumed.get("levels") or [])
        preamble += [f"Resumed from run {resumed['id']}, which measured {loads or 'no level'}; "
                     "this table holds only the levels measured in this run.", ""]
    rows = []
    notes = []
    # Where the token counts come from, and what each level's notes say (a stall, ...).
    said = [md_escape(line[:1].upper() + line[1:]) + "." for line in token_notes(doc)[1]]
    for lv in doc["levels"]:
        latency = lv.get("latency_ms") or {}
        gpu = gpu_totals(lv)
        load = figure(level_load(lv))
        shape = (lv.get("shape") or {}).get("value")
        load_text = f"{md_escape(str(shape))} · {load}" if shape is not None else load
        if lv.get("status") in ("aborted", "cancelled"):
            load_text += f" ({lv['status']})"
        if (lv.get("client") or {}).get("client_bound"):
            load_text += " ¹"
            notes.append("¹ the client, not the server, limited this level; its figures understate the server.")
        said.extend(f"{load_name} {load}: {md_escape(note)}." for note in lv.get("notes") or [])
        rows.append([
            load_text,
            figure(lv.get("qps")),
            *([figure((lv.get("goodput") or {}).get("per_s"))] if goodput_head else []),
            figure(lv.get("texts_per_s")),
            figure(lv.get("tokens_per_s")),
            figure(latency.get("p50")),
            figure(latency.get("p90")),
            figure(latency.get("p99")),
            figure(latency.get("max")),
            percent(lv.get("error_rate") or 0),
            _with_unit(gpu["gpu_util_mean"], "%"),
            figure(gpu["power_mean_w"]),
        ])
    lines = [title, "", *preamble, *markdown_table(header, rows, ["right"] * len(header))]
    if notes:
        lines += ["", notes[0]]
    if said:
        lines += ["", *said]
    return "\n".join(lines) + "\n"
