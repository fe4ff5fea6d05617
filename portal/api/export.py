"""Exports of a run: the result document (embperf.run/1), a CSV row per level, a Markdown table.

The column names of the CSV are a public contract (docs/api.md): add columns at the end,
never rename or drop one.
"""
import csv
import io

from benchmarks.document import SCHEMA, public_target
from portal.sweeps.models import Run
from portal.sweeps.services import gpu_totals


def _iso(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def result_document(run: Run) -> dict:
    """Rebuild the run's result document from Run.document and its Level rows.

    The portal's own fields (id, status, label, notes, snapshots) win over the stored document,
    so a label edited later or a run that stopped before finishing still exports correctly.
    """
    stored = dict(run.document or {})
    stored.pop("levels", None)
    run_section = dict(stored.get("run") or {})
    run_section.update(
        {
            "id": run.pk,
            "uuid": str(run.uuid),
            "label": run.label,
            "notes": run.notes,
            "server_config": dict(run.server_config or {}),
            "status": run.status,
            "status_reason": run.status_reason,
            "started_at": _iso(run.started) or run_section.get("started_at"),
            "finished_at": _iso(run.finished) or run_section.get("finished_at"),
            "aborted_at_level": run_section.get("aborted_at_level"),
        }
    )
    if run.resumed_from_id is not None:
        earlier = run.earlier_levels()
        original = run.resumed_from
        run_section["resumed_from"] = {"id": original.pk, "uuid": str(original.uuid),
                                       "levels": [level.load for _, level in earlier]}
    else:
        run_section.setdefault("resumed_from", None)
    doc = {"schema": SCHEMA}
    doc.update(stored)
    doc["schema"] = SCHEMA
    doc["run"] = run_section
    doc["target"] = public_target(run.target_config or stored.get("target") or {})
    doc["plan"] = dict(run.plan_config or stored.get("plan") or {})
    doc["levels"] = [level.data for level in run.levels.order_by("index")]
    doc["summary"] = dict(run.summary or stored.get("summary") or {})
    return doc


# (column, function of (run, level document)) -- the CSV export, one row per level.
def _latency(key):
    return lambda run, lv: (lv.get("latency_ms") or {}).get(key)


def _service(key):
    return lambda run, lv: (lv.get("service_ms") or {}).get(key)


def _error(key):
    return lambda run, lv: (lv.get("errors") or {}).get(key, 0)


def _gpu(key):
    return lambda run, lv: gpu_totals(lv)[key]


LEVEL_COLUMNS = (
    ("run_id", lambda run, lv: run.pk),
    ("run_uuid", lambda run, lv: str(run.uuid)),
    ("run_label", lambda run, lv: run.label),
    ("run_status", lambda run, lv: run.status),
    ("target", lambda run, lv: run.target_config.get("name")),
    ("model", lambda run, lv: run.target_config.get("model")),
    ("engine", lambda run, lv: run.target_config.get("engine")),
    ("engine_version", lambda run, lv: run.target_config.get("engine_version")),
    ("plan", lambda run, lv: run.plan_config.get("name")),
    ("mode", lambda run, lv: run.plan_config.get("mode")),
    ("level_index", lambda run, lv: lv.get("index")),
    ("concurrency", lambda run, lv: lv.get("concurrency")),
    ("rate", lambda run, lv: lv.get("rate")),
    ("level_status", lambda run, lv: lv.get("status")),
    ("duration_s", lambda run, lv: lv.get("duration_s")),
    ("requests_started", lambda run, lv: lv.get("requests_started")),
    ("requests_ok", lambda run, lv: lv.get("requests_ok")),
    ("requests_failed", lambda run, lv: lv.get("requests_failed")),
    ("in_flight_at_end", lambda run, lv: lv.get("in_flight_at_end")),
    ("qps", lambda run, lv: lv.get("qps")),
    ("texts_per_s", lambda run, lv: lv.get("texts_per_s")),
    ("tokens_per_s", lambda run, lv: lv.get("tokens_per_s")),
    ("tokens_estimated", lambda run, lv: lv.get("tokens_estimated")),
    ("latency_mean_ms", _latency("mean")),
    ("latency_p50_ms", _latency("p50")),
    ("latency_p90_ms", _latency("p90")),
    ("latency_p95_ms", _latency("p95")),
    ("latency_p99_ms", _latency("p99")),
    ("latency_p999_ms", _latency("p999")),
    ("latency_max_ms", _latency("max")),
    ("service_p50_ms", _service("p50")),
    ("service_p99_ms", _service("p99")),
    ("error_rate", lambda run, lv: lv.get("error_rate")),
    ("errors_http_4xx", _error("http_4xx")),
    ("errors_http_429", _error("http_429")),
    ("errors_http_5xx", _error("http_5xx")),
    ("errors_timeout", _error("timeout")),
    ("errors_connect_error", _error("connect_error")),
    ("errors_invalid_response", _error("invalid_response")),
    ("client_bound", lambda run, lv: bool((lv.get("client") or {}).get("client_bound"))),
    ("gpu_util_mean", _gpu("gpu_util_mean")),
    ("gpu_memory_used_peak_mib", _gpu("vram_peak_mib")),
    ("gpu_power_mean_w", _gpu("power_mean_w")),
    ("joules_per_1k_tokens", lambda run, lv: (lv.get("energy") or {}).get("joules_per_1k_tokens")),
    ("run_aborted_at_level", lambda run, lv: run.aborted_at_level),
    ("unreachable_s", lambda run, lv: lv.get("unreachable_s")),
    ("run_resumed_from", lambda run, lv: run.resumed_from_id),
)
LEVEL_COLUMN_NAMES = tuple(name for name, _ in LEVEL_COLUMNS)


def _cell(value) -> str:
    # repr() of a float round-trips exactly, so the CSV carries the JSON document's figures unchanged.
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def levels_csv(runs: list[Run]) -> str:
    """One CSV row per level of each run, header first."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(LEVEL_COLUMN_NAMES)
    for run in runs:
        for level in run.levels.order_by("index"):
            writer.writerow([_cell(fn(run, level.data)) for _, fn in LEVEL_COLUMNS])
    return out.getvalue()


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    else:
        text = f"{value:,}"
    return text + unit


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def levels_markdown(run: Run) -> str:
    """The run's levels as a Markdown table, with a title line naming target, plan and status."""
    load_name = "Rate (req/s)" if run.level_key == "rate" else "Concurrency"
    title = (
        f"**Run {run.pk}** {_md_escape(run.label) + ' ' if run.label else ''}"
        f"– target {_md_escape(run.target_config.get('name', '?'))}, "
        f"plan {_md_escape(run.plan_config.get('name', '?'))}, {run.status}"
    )
    header = [load_name, "req/s", "texts/s", "tokens/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors",
              "GPU util", "power W"]
    lines = [title, ""]
    if run.aborted_at_level is not None:
        lines += [f"**Stopped by the abort policy at level {_fmt(run.aborted_at_level)}**: the levels after it "
                  "were not measured.", ""]
    if run.resumed_from_id is not None:
        loads = ", ".join(_fmt(level.load) for _, level in run.earlier_levels())
        lines += [f"Resumed from run {run.resumed_from_id}, which measured {loads or 'no level'}; "
                  "this table holds only the levels measured in this run.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    notes = []
    for level in run.levels.order_by("index"):
        lv = level.data
        latency = lv.get("latency_ms") or {}
        gpu = gpu_totals(lv)
        load = lv.get("rate") if run.level_key == "rate" else lv.get("concurrency")
        load_text = _fmt(load)
        if lv.get("status") in ("aborted", "cancelled"):
            load_text += f" ({lv['status']})"
        if (lv.get("client") or {}).get("client_bound"):
            load_text += " ¹"
            notes.append("¹ the client, not the server, limited this level; its figures understate the server.")
        row = [
            load_text,
            _fmt(lv.get("qps")),
            _fmt(lv.get("texts_per_s")),
            _fmt(lv.get("tokens_per_s")),
            _fmt(latency.get("p50")),
            _fmt(latency.get("p90")),
            _fmt(latency.get("p99")),
            _fmt(latency.get("max")),
            _fmt((lv.get("error_rate") or 0) * 100, " %"),
            _fmt(gpu["gpu_util_mean"], " %"),
            _fmt(gpu["power_mean_w"]),
        ]
        lines.append("| " + " | ".join(row) + " |")
    if notes:
        lines += ["", notes[0]]
    return "\n".join(lines) + "\n"
