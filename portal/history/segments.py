"""Segments of a history and the between-run noise they give: one rule for compare, history and dashboard.

A segment is a stretch of runs of one target and plan whose target, plan and server-config
snapshots are identical: repeats of one set-up. What varies between such runs (server restarts,
GPU clocks, neighbours) is noise; a configuration change is not, so it starts a new segment.

A run's between-run noise comes from the *other* succeeded runs with its configuration (the latest
REPEAT_WINDOW of them); the run itself is left out, so a run that got much slower never widens the
noise that judges it. Levels whose error rate is above ERRORED_LEVEL_RATE are no repeats of a
working server's figures and are left out too. Fewer than 3 repeats give no estimate.
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from benchmarks.compare import METRICS, between_run_noise

# Repeats (latest first) of one configuration that feed its between-run noise.
REPEAT_WINDOW = 20
# A level with more errors than this measured a failing server (the plans' default error threshold).
ERRORED_LEVEL_RATE = 0.01

TARGET_LABELS = {
    "name": "Target", "engine": "Engine", "engine_version": "Engine version", "model": "Model",
    "flavor": "API flavor", "base_urls": "Base URLs", "gpus": "GPUs", "gpu_source": "GPU source",
    "metrics_urls": "Metrics URLs", "queue": "Queue", "tokenizer": "Tokenizer",
}
PLAN_LABELS = {
    "name": "Plan", "mode": "Load mode", "levels": "Levels", "arrival": "Arrival", "max_in_flight": "Max in flight",
    "warmup_s": "Warm-up (s)", "duration_s": "Duration (s)", "tokens": "Tokens per text", "batch": "Texts per request",
    "dimensions": "Dimensions", "encoding": "Encoding", "timeout_s": "Timeout (s)", "slo_p99_ms": "SLO p99 (ms)",
    "input": "Input", "processes": "Client processes", "abort_error_rate": "Abort error rate",
    "abort_window_s": "Abort window (s)", "corpus": "Corpus", "keep_samples": "Keep samples",
    "thresholds": "Thresholds",
}


def config_fingerprint(target_config: dict, plan_config: dict, server_config: dict) -> str:
    """Identical for runs made with the same target, plan and server configuration (repeats)."""
    return json.dumps([target_config or {}, plan_config or {}, server_config or {}], sort_keys=True, default=str)


def config_text(value) -> str:
    """A configuration value as the "What changed" panels write it ('–' for nothing)."""
    if value is None or value == "" or value == [] or value == {}:
        return "–"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def snapshot_fields(target_config: dict, plan_config: dict, server_config: dict) -> dict[str, str]:
    """The three snapshots flattened to labelled strings: 'Engine', 'Launch --x', 'Server --y', 'Levels'."""
    fields: dict[str, str] = {}
    for key, value in sorted((target_config or {}).items()):
        if key == "launch_config":
            for name, setting in sorted((value or {}).items()):
                fields[f"Launch {name}"] = config_text(setting)
        else:
            fields[TARGET_LABELS.get(key, f"Target {key}")] = config_text(value)
    for key, value in sorted((server_config or {}).items()):
        fields[f"Server {key}"] = config_text(value)
    for key, value in sorted((plan_config or {}).items()):
        fields[PLAN_LABELS.get(key, f"Plan {key}")] = config_text(value)
    return fields


def config_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """'Server --max-running-requests: 64 → 128' for every field that differs, sorted by field."""
    names = sorted(set(before) | set(after))
    return [f"{name}: {before.get(name, '–')} → {after.get(name, '–')}" for name in names
            if before.get(name, "–") != after.get(name, "–")]


@dataclass
class Repeat:
    """One run as a possible repeat: its configuration, whether it counts, and its level figures."""

    id: int
    created: object
    key: str  # config_fingerprint (with the target and plan ids when runs of several pairs are mixed)
    counts: bool  # succeeded: an ended-early or failed run repeats nothing
    levels: dict[float, dict[str, float | None]] = field(default_factory=dict)  # load -> metric -> value


def usable_level(values: dict[str, float | None]) -> bool:
    """Whether a level's figures measured a working server (its error rate within ERRORED_LEVEL_RATE)."""
    rate = values.get("error_rate")
    return rate is None or rate <= ERRORED_LEVEL_RATE


def repeat_noise(repeats: Iterable[Repeat], wanted: Iterable[int] | None = None
                 ) -> dict[int, dict[float, dict[str, float | None]]]:
    """{run id: {load: {metric: between-run noise or None}}} for each wanted run (default: all).

    The noise of a run's figure is between_run_noise over the same figure of the latest REPEAT_WINDOW
    other counting runs with the run's configuration, in time order."""
    repeats = sorted(repeats, key=lambda r: (r.created, r.id))
    by_key: dict[str, list[Repeat]] = defaultdict(list)
    for r in repeats:
        if r.counts:
            by_key[r.key].append(r)
    wanted_ids = None if wanted is None else set(wanted)
    out: dict[int, dict[float, dict[str, float | None]]] = {}
    for run in repeats:
        if wanted_ids is not None and run.id not in wanted_ids:
            continue
        others = [r for r in by_key.get(run.key, []) if r.id != run.id][-REPEAT_WINDOW:]
        noise: dict[float, dict[str, float | None]] = {}
        for load in run.levels:
            series = [r.levels[load] for r in others if load in r.levels and usable_level(r.levels[load])]
            noise[load] = {m: between_run_noise([v.get(m) for v in series]) for m in METRICS}
        out[run.id] = noise
    return out
