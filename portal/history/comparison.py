"""Compare 2 to 10 runs against a baseline run: per-level figures, differences, noise, config changes.

The maths lives in benchmarks.compare; this module gathers the numbers from the database in a
fixed number of queries (never reading Level.data) and shapes them for the page, the API, CSV
and Markdown.
"""
from __future__ import annotations

import math
from collections import defaultdict

from django.db.models import Q

from benchmarks.compare import (
    K_SIGMA,
    METRICS,
    capacity_change_text,
    capacity_delta,
    capacity_uncertainty,
    change_floor,
    combine_noise,
    compare_values,
)
from benchmarks.numbers import MISSING, figure
from benchmarks.slo import limit_text
from benchmarks.tables import csv_text, markdown_table
from portal.history.models import LevelStats
from portal.history.segments import (
    REPEAT_WINDOW,
    Repeat,
    capacity_noise,
    capacity_value,
    config_fingerprint,
    repeat_noise,
)
from portal.sweeps.models import Level, Run

MIN_RUNS, MAX_RUNS = 2, 10

# Level column holding each compared figure.
METRIC_COLUMNS = {
    "qps": "qps",
    "tokens_per_s": "tokens_per_s",
    "mean_ms": "latency_mean_ms",
    "p50_ms": "latency_p50_ms",
    "p90_ms": "latency_p90_ms",
    "p99_ms": "latency_p99_ms",
    "error_rate": "error_rate",
    "goodput": "goodput_per_s",
}
HEADLINE_FIELDS = ("id", "run_id", "index", "concurrency", "rate", "client_bound", "shape_value",
                   *METRIC_COLUMNS.values())


def cell_order(cell: tuple[str, float]) -> tuple:
    """Cells (shape value, load) in a grid's order: shapes by number where they are numbers (32 before
    128), then by name; loads ascending."""
    shape, load = cell
    try:
        rank = (1, float(shape), "")
    except ValueError:
        rank = (2, 0.0, shape)
    return (rank if shape else (0, 0.0, ""), load)


class ComparisonError(ValueError):
    """A selection that cannot be compared; the message says why in plain words, `field` which
    parameter it is about (runs, metrics, levels)."""

    def __init__(self, message: str, field: str = "runs"):
        super().__init__(message)
        self.field = field


def parse_metrics(value: str | None) -> list[str] | None:
    """Figure keys from ?metrics=qps,mean_ms,p99_ms (None: every figure); ComparisonError names a wrong one."""
    if not value or not value.strip():
        return None
    keys = []
    for part in value.replace(" ", "").split(","):
        if not part:
            continue
        if part not in METRICS:
            raise ComparisonError(f"'{part[:40]}' is not a compared figure; pick from {', '.join(METRICS)}.",
                                  "metrics")
        if part not in keys:
            keys.append(part)
    return keys or None


def parse_levels(value: str | None) -> list[float] | None:
    """Loads from ?levels=16,32,64 (None: every level); ComparisonError names a wrong one."""
    if not value or not value.strip():
        return None
    loads = []
    for part in value.replace(" ", "").split(","):
        if not part:
            continue
        try:
            load = float(part) if part.isascii() and len(part) <= 20 else math.nan
        except ValueError:
            load = math.nan
        if not math.isfinite(load) or load < 0:
            raise ComparisonError(f"'{part[:40]}' is not a level; give loads like 16,32,64.", "levels")
        if load not in loads:
            loads.append(load)
    return loads or None


def is_id(text: str) -> bool:
    """True for a plain ASCII whole number that fits a database id ('²' and '٣' are digits, not ids)."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def parse_run_ids(values: list[str]) -> list[int]:
    """Run ids from ?runs=1,2,3 (or repeated ?runs=1&runs=2), in order, without duplicates."""
    ids: list[int] = []
    for value in values:
        for part in value.replace(" ", "").split(","):
            if not part:
                continue
            if not is_id(part):
                raise ComparisonError(f"'{part}' is not a run number; give ids like 12,15,16.")
            if int(part) not in ids:
                ids.append(int(part))
    return ids


def headline_levels(run_ids) -> list[Level]:
    """The runs' levels with their headline columns only (the level documents stay in the database)."""
    return list(Level.objects.filter(run_id__in=run_ids).only(*HEADLINE_FIELDS).order_by("run_id", "index"))


def level_value(level: Level, metric: str) -> float | None:
    return getattr(level, METRIC_COLUMNS[metric])


def repeat_key(run: Run) -> tuple:
    return (run.target_id, run.plan_id, config_fingerprint(run.target_config, run.plan_config, run.server_config))


def repeated_run_noise(runs: list[Run]) -> tuple[dict[int, dict[float, dict[str, float | None]]],
                                                  dict[int, float | None]]:
    """({run id: {load: {metric: between-run noise}}}, {run id: its capacity's between-run spread}) for
    each compared run, from the other succeeded runs of its segment (same target, plan and
    configuration; see portal/history/segments.py), the compared runs left out."""
    pairs = {(r.target_id, r.plan_id) for r in runs if r.target_id and r.plan_id}
    if not pairs:
        return {}, {}
    match = Q()
    for target_id, plan_id in pairs:
        match |= Q(target_id=target_id, plan_id=plan_id)
    wanted = {repeat_key(r): r for r in runs}
    rows = (Run.objects.filter(match, status=Run.Status.SUCCEEDED).exclude(pk__in=[r.pk for r in runs])
            .values_list("id", "target_id", "plan_id", "created", "target_config", "plan_config", "server_config",
                         "document__capacity"))
    members: dict[tuple, list] = defaultdict(list)
    for run_id, target_id, plan_id, created, target_config, plan_config, server_config, answer in rows:
        key = (target_id, plan_id, config_fingerprint(target_config, plan_config, server_config))
        if key in wanted:
            members[key].append((created, run_id, capacity_value(answer)))
    # The compared runs are no repeats of one another: a slower candidate in the baseline's segment
    # must not widen the noise that judges it (nor the baseline the candidate's).
    repeats = {r.pk: Repeat(id=r.pk, created=r.created, key=str(repeat_key(r)), counts=False,
                            capacity=capacity_value(r.capacity_answer))
               for r in runs}
    for key, found in members.items():
        # The newest REPEAT_WINDOW + 1 are enough: each run leaves only itself out.
        for created, run_id, value in sorted(found, key=lambda m: m[:2])[-(REPEAT_WINDOW + 1):]:
            repeats[run_id] = Repeat(id=run_id, created=created, key=str(key), counts=True, capacity=value)
    for lv in headline_levels(list(repeats)):
        repeats[lv.run_id].levels[lv.cell] = {m: level_value(lv, m) for m in METRIC_COLUMNS}
    wanted_ids = [r.pk for r in runs]
    return (repeat_noise(repeats.values(), wanted=wanted_ids),
            capacity_noise(repeats.values(), wanted=wanted_ids))


def run_title(run: Run) -> str:
    """'#12 tuned' or '#12 <target name>' — how a run is named in tables and legends."""
    return f"#{run.pk} {run.label or run.target_config.get('name', '')}".strip()


def _fmt_value(metric: str, value: float | None) -> str:
    if value is None:
        return MISSING
    if metric == "error_rate":
        return f"{value * 100:.2f} %"
    return figure(value, decimals=0 if metric == "tokens_per_s" else 1)


def _fmt_diff(metric: str, diff: float) -> str:
    if metric == "error_rate":
        return f"{diff * 100:+.2f} pp"
    if metric == "tokens_per_s":
        return f"{diff:+,.0f}"
    return f"{diff:+,.1f}"


def _fmt_pct(delta: dict | None) -> str:
    if delta is None or delta["pct"] is None:
        return "–"
    mark = "*" if delta["significant"] else ""
    return f"{delta['pct']:+.1f} %{mark}"


def _load_text(load: float) -> str:
    return f"{load:g}"


def config_fields(run: Run, gpu_names: list[str]) -> dict[str, str]:
    """The configuration a run ran with, flattened to labelled strings for the "What changed" panel."""
    t, p = run.target_config or {}, run.plan_config or {}
    doc = run.document or {}
    client, probe = doc.get("client") or {}, doc.get("probe") or {}

    def text(value) -> str:
        if value is None or value == "" or value == []:
            return "–"
        if isinstance(value, list | tuple):
            return ", ".join(str(v) for v in value)
        return str(value)

    fields = {
        "Target": text(t.get("name")),
        "Engine": text(t.get("engine")),
        "Engine version": text(t.get("engine_version")),
        "Model": text(t.get("model")),
        "Served model": text(probe.get("served_model")),
        "API flavor": text(t.get("flavor")),
        "Base URLs": text(t.get("base_urls")),
        "GPU model": text(sorted(set(gpu_names))),
        "GPUs": text(t.get("gpus")),
    }
    for key, value in sorted((t.get("launch_config") or {}).items()):
        fields[f"Launch {key}"] = text(value)
    for key, value in sorted((run.server_config or {}).items()):
        fields[f"Server {key}"] = text(value)
    plan_labels = [
        ("name", "Plan"), ("mode", "Load mode"), ("levels", "Levels"), ("arrival", "Arrival"),
        ("max_in_flight", "Max in flight"), ("warmup_s", "Warm-up (s)"), ("duration_s", "Duration (s)"),
        ("tokens", "Tokens per text"), ("batch", "Texts per request"), ("dimensions", "Dimensions"),
        ("encoding", "Encoding"), ("timeout_s", "Timeout (s)"), ("slo_p99_ms", "SLO p99 (ms)"),
        ("input", "Input"), ("processes", "Client processes"),
    ]
    for key, label in plan_labels:
        fields[label] = text(p.get(key))
    fields["Worker host"] = text(run.worker_host or client.get("host"))
    fields["Client version"] = text(run.client_version or client.get("version"))
    fields["Python"] = text(client.get("python"))
    return fields


class Comparison:
    """Runs aligned level by level against a baseline; see to_dict() for the shape."""

    def __init__(self, runs: list[Run], baseline: Run, levels: dict[int, dict[tuple, Level]],
                 stats: dict[int, LevelStats], repeats: dict[int, dict], metrics: list[str] | None = None,
                 loads: list[float] | None = None, capacity_spread: dict[int, float | None] | None = None):
        self.runs = runs
        self._capacity_spread = capacity_spread or {}
        self.baseline = baseline
        self.candidates = [r for r in runs if r.pk != baseline.pk]
        self._levels = levels
        self._stats = stats
        self._repeats = repeats
        # Levels are aligned on their cell: (shape value, load), ("", load) without a shape axis.
        self.all_cells = sorted({cell for by_cell in levels.values() for cell in by_cell}, key=cell_order)
        self.all_loads = sorted({load for _, load in self.all_cells})
        self.shaped = any(shape for shape, _ in self.all_cells)
        unknown = [load for load in loads or [] if load not in self.all_loads]
        if unknown:
            raise ComparisonError(f"Level {unknown[0]:g} is in none of the compared runs; their levels are "
                                  f"{', '.join(f'{x:g}' for x in self.all_loads)}.", "levels")
        # The picked figures and levels, in their natural order (every one when none is picked).
        # Goodput only where some compared level has one (a plan with a latency SLO) unless picked.
        has_goodput = any(lv.goodput_per_s is not None for by_load in levels.values() for lv in by_load.values())
        self.metrics = [m for m in METRICS if (m in metrics if metrics is not None else m != "goodput" or has_goodput)]
        self.loads = [load for load in self.all_loads if loads is None or load in loads]
        self.cells = [cell for cell in self.all_cells if cell[1] in self.loads]
        self.picked = {"metrics": metrics is not None, "levels": loads is not None}
        fields = {(r.plan_config or {}).get("shape_field") for r in runs} - {None, ""}
        self.shape_field = fields.pop() if len(fields) == 1 else ("shape" if fields else None)
        modes = {r.level_key for r in runs}
        self.load_key = modes.pop() if len(modes) == 1 else "load"
        self.rows = self._build_rows()

    def _noise(self, run: Run, level: Level, metric: str) -> float | None:
        stats = self._stats.get(level.pk)
        within = stats.noise.get(metric) if stats else None
        return combine_noise(within, self._repeat(run, level, metric))

    def _repeat(self, run: Run, level: Level, metric: str) -> float | None:
        """The between-run noise of a run's figure from its repeats, None with fewer than three."""
        return self._repeats.get(run.pk, {}).get(level.cell, {}).get(metric)

    def _build_rows(self) -> list[dict]:
        rows = []
        for cell in self.cells:
            base_level = self._levels[self.baseline.pk].get(cell)
            for metric_key in self.metrics:
                metric = METRICS[metric_key]
                cells = []
                base_value = level_value(base_level, metric_key) if base_level else None
                base_noise = self._noise(self.baseline, base_level, metric_key) if base_level else None
                base_repeated = bool(base_level) and self._repeat(self.baseline, base_level, metric_key) is not None
                for run in self.runs:
                    level = self._levels[run.pk].get(cell)
                    value = level_value(level, metric_key) if level else None
                    noise = self._noise(run, level, metric_key) if level else None
                    delta = None
                    if run.pk != self.baseline.pk and value is not None and base_value is not None:
                        repeated = base_repeated and self._repeat(run, level, metric_key) is not None
                        delta = compare_values(metric, base_value, base_noise, value, noise,
                                               floor=change_floor(metric_key, repeated)).to_dict()
                    cells.append({"run": run.pk, "value": value, "noise": noise, "delta": delta,
                                  "client_bound": bool(level and level.client_bound)})
                rows.append({"shape": cell[0], "load": cell[1], "metric": metric_key, "cells": cells})
        return rows

    def capacity(self) -> dict | None:
        """The runs' capacity answers side by side, each candidate's against the baseline's
        (benchmarks.compare.capacity_delta: beyond both answers' uncertainty and their set-ups' spread);
        None when no compared run searched for its capacity."""
        answers = [r.capacity_answer for r in self.runs]
        if not any(answers):
            return None
        base = self.baseline.capacity_answer
        cells = []
        for run, answer in zip(self.runs, answers, strict=True):
            cell = {"run": run.pk, "title": run_title(run), "is_reference": run.pk == self.baseline.pk,
                    "load": None, "lowest_fail": None, "uncertainty": None, "binding": None, "status": None,
                    "unit": None, "slo": "", "delta": None, "text": ""}
            if answer:
                cell.update(load=answer.get("load"), lowest_fail=answer.get("lowest_fail"),
                            uncertainty=capacity_uncertainty(answer), binding=answer.get("binding"),
                            status=answer.get("status"), unit=answer.get("unit"),
                            slo=limit_text(answer.get("slo") or {}))
            if run.pk != self.baseline.pk:
                delta = capacity_delta(base, answer, base_spread=self._capacity_spread.get(self.baseline.pk),
                                       spread=self._capacity_spread.get(run.pk))
                cell["delta"] = delta
                if base and answer:
                    cell["text"] = capacity_change_text(delta, cell["slo"])
            cells.append(cell)
        return {"cells": cells}

    def figures(self, run: Run) -> dict:
        """Peak, knee and SLO figures of one run, as the engine summarised it."""
        return run.figures

    def config_diff(self) -> dict:
        """{"changed": [{"field", "values"}], "same": [{"field", "value"}]}: identical fields folded apart."""
        per_run = []
        for run in self.runs:
            names = [name for lv in self._levels[run.pk].values()
                     for name in getattr(self._stats.get(lv.pk), "gpu_names", [])]
            per_run.append(config_fields(run, names))
        fields = list(dict.fromkeys(f for cfg in per_run for f in cfg))
        changed, same = [], []
        for field in fields:
            values = [cfg.get(field, "–") for cfg in per_run]
            if len(set(values)) > 1:
                changed.append({"field": field, "values": values})
            else:
                same.append({"field": field, "value": values[0]})
        return {"changed": changed, "same": same}

    def to_dict(self) -> dict:
        """JSON-ready comparison: runs, metrics, rows (one per level and metric), config diff.

        A figure that overflows (a huge stored value, a difference of two) becomes null: JSON has no
        infinity, and one bad figure must not cost the whole comparison."""
        return _finite({
            "baseline": self.baseline.pk,
            "k_sigma": K_SIGMA,
            "load_key": self.load_key,
            "loads": self.loads,
            "shape_field": self.shape_field,
            "runs": [
                {
                    "id": r.pk,
                    "title": run_title(r),
                    "label": r.label,
                    "target": r.target_config.get("name", ""),
                    "plan": r.plan_config.get("name", ""),
                    "created": r.created.isoformat() if r.created else None,
                    "status": r.status,
                    "is_reference": r.pk == self.baseline.pk,
                    "is_baseline": r.is_baseline,
                    "figures": self.figures(r),
                }
                for r in self.runs
            ],
            "metrics": [
                {"key": m.key, "label": m.label, "unit": m.unit, "higher_is_better": m.higher_is_better}
                for m in (METRICS[k] for k in self.metrics)
            ],
            "available": {"metrics": list(METRICS), "loads": self.all_loads},
            "rows": self.rows,
            "capacity": self.capacity(),
            "config_diff": self.config_diff(),
        })

    def to_csv(self) -> str:
        """One line per level and metric: each run's value, and each candidate's diff, % and significance;
        then one line per run-wide figure (peak, knee, SLO level, as each run's summary has them)."""
        header = [self.load_key, "metric", "unit"]
        for r in self.runs:
            header.append(f"run {r.pk} value")
            if r.pk != self.baseline.pk:
                header += [f"run {r.pk} diff", f"run {r.pk} pct", f"run {r.pk} significant"]
        lines = [header]
        for row in self.rows:
            metric = METRICS[row["metric"]]
            line = [_load_text(row["load"]), metric.key, metric.unit if metric.key != "error_rate" else "fraction"]
            for run, cell in zip(self.runs, row["cells"], strict=True):
                line.append("" if cell["value"] is None else cell["value"])
                if run.pk != self.baseline.pk:
                    d = cell["delta"]
                    line += ["", "", ""] if d is None else [
                        d["diff"], "" if d["pct"] is None else round(d["pct"], 3),
                        "" if d["significant"] is None else str(d["significant"]).lower(),
                    ]
            lines.append(line)
        units = {"peak_qps": "req/s", "peak_level": self.load_key, "knee_level": self.load_key,
                 "slo_max_level": self.load_key}
        for key, unit in units.items():
            line = ["run", key, unit]
            for run in self.runs:
                value = self.figures(run)[key]
                line.append("" if value is None else value)
                if run.pk != self.baseline.pk:
                    line += ["", "", ""]
            lines.append(line)
        capacity = self.capacity()
        if capacity:
            unit = {"rate": "req/s", "concurrency": "concurrency"}.get(
                next((c["unit"] for c in capacity["cells"] if c["unit"]), None), "")
            for key in ("load", "lowest_fail"):
                line = ["run", "capacity" if key == "load" else "capacity_lowest_fail", unit]
                for run, cell in zip(self.runs, capacity["cells"], strict=True):
                    line.append("" if cell[key] is None else cell[key])
                    if run.pk != self.baseline.pk:
                        d = cell["delta"] or {}
                        line += ["", "", ""] if key != "load" or d.get("diff") is None else [
                            d["diff"], "" if d["pct"] is None else round(d["pct"], 3),
                            str(d["verdict"] in ("better", "worse")).lower()]
                lines.append(line)
        if self.shaped:
            # A shape axis: its value first on each level's line (run-wide lines have none).
            shapes = [self.shape_field, *(row["shape"] for row in self.rows)]
            lines = [[shapes[i] if i < len(shapes) else "", *line] for i, line in enumerate(lines)]
        return csv_text(lines)

    def to_markdown(self) -> str:
        """A Markdown table (the form pasted into reports): level, metric, each run, diff and % change.

        A % marked * exceeds the noise (K_SIGMA standard errors).
        """
        load_title = {"concurrency": "Concurrency", "rate": "Rate (req/s)"}.get(self.load_key, "Load")
        header = [load_title, "Metric", f"{run_title(self.baseline)} (baseline)"]
        align = ["right", "left", "right"]
        if self.shaped:
            header.insert(0, (self.shape_field or "shape").capitalize())
            align.insert(0, "left")
        for r in self.candidates:
            header += [run_title(r), "Δ", "Δ %"]
            align += ["right", "right", "right"]
        table = []
        base_index = self.runs.index(self.baseline)
        for row in self.rows:
            metric = METRICS[row["metric"]]
            label = metric.label + ("" if metric.key == "error_rate" else f" ({metric.unit})")
            cells = row["cells"]
            line = [_load_text(row["load"]), label, _fmt_value(metric.key, cells[base_index]["value"])]
            if self.shaped:
                line.insert(0, _md_text(row["shape"]))
            for run, cell in zip(self.runs, cells, strict=True):
                if run.pk == self.baseline.pk:
                    continue
                d = cell["delta"]
                line += [_fmt_value(metric.key, cell["value"]),
                         "–" if d is None else _fmt_diff(metric.key, d["diff"]), _fmt_pct(d)]
            table.append(line)
        note = f"\\* beyond the noise ({K_SIGMA:g} standard errors of the difference, and 2 % of the baseline)."
        lines = [*self._capacity_markdown(), *markdown_table(header, table, align), "", note, "",
                 *self._what_changed_markdown()]
        return "\n".join(lines) + "\n"

    def _capacity_markdown(self) -> list[str]:
        """'**Capacity**: #1 base 40 req/s (baseline); #2 tuned 47 req/s, +18 % capacity at p99 ≤ 200 ms *'."""
        capacity = self.capacity()
        if not capacity:
            return []
        parts = []
        for run, cell in zip(self.runs, capacity["cells"], strict=True):
            unit = " req/s" if cell["unit"] == "rate" else " in flight" if cell["unit"] else ""
            value = "–" if cell["status"] is None else "none" if cell["load"] is None else f"{cell['load']:g}{unit}"
            if run.pk == self.baseline.pk:
                parts.append(f"{_md_text(run_title(run))} {value} (baseline)")
            else:
                mark = " \\*" if (cell["delta"] or {}).get("verdict") in ("better", "worse") else ""
                text = f", {_md_text(cell['text'])}{mark}" if cell["text"] else ""
                parts.append(f"{_md_text(run_title(run))} {value}{text}")
        return [f"**Capacity**: {'; '.join(parts)}.", ""]

    def _what_changed_markdown(self) -> list[str]:
        """The "What changed" panel as a Markdown list: each differing field with every run's value."""
        changed = self.config_diff()["changed"]
        lines = ["**What changed**", ""]
        if not changed:
            return [*lines, "- nothing: the runs were made with identical configurations."]
        titles = [f"#{r.pk}" for r in self.runs]
        for item in changed:
            values = ", ".join(f"{t} {_md_text(v)}" for t, v in zip(titles, item["values"], strict=True))
            lines.append(f"- {_md_text(item['field'])}: {values}")
        return lines


def _md_text(text: str) -> str:
    """A configuration value safe inside a Markdown list item (no markup, one line)."""
    text = " ".join(str(text).split())
    for char in "\\`*_[]<>|":
        text = text.replace(char, "\\" + char)
    return text


def _finite(value):
    """The value with every infinite or NaN float inside it replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def build_comparison(runs: list[Run], baseline: Run, *, metrics: list[str] | None = None,
                     loads: list[float] | None = None) -> Comparison:
    """Compare `runs` (already permission-checked, in display order) against `baseline`, one of them;
    only the picked figures and levels (every one by default)."""
    if not MIN_RUNS <= len(runs) <= MAX_RUNS:
        raise ComparisonError(f"Pick between {MIN_RUNS} and {MAX_RUNS} runs to compare (got {len(runs)}).")
    if baseline.pk not in {r.pk for r in runs}:
        raise ComparisonError(f"The baseline run #{baseline.pk} is not one of the compared runs.")
    levels: dict[int, dict[tuple, Level]] = {r.pk: {} for r in runs}
    all_levels = headline_levels([r.pk for r in runs])
    for lv in all_levels:
        levels[lv.run_id][lv.cell] = lv
    stats = LevelStats.objects.for_levels(all_levels)
    repeats, capacity_spread = repeated_run_noise(runs)
    return Comparison(runs, baseline, levels, stats, repeats, metrics=metrics, loads=loads,
                      capacity_spread=capacity_spread)
