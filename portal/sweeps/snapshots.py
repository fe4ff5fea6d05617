"""A run's configuration snapshots (target, plan, server config) as one fingerprint and as labelled
fields: what tells repeats of one set-up apart from a changed one (portal/history/segments.py), and
what "Run again" says changed since the run it repeats."""
import json

from benchmarks.plan import PLAN_DEFAULTS, format_threshold
from benchmarks.verdict import thresholds_of

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


def _number_text(value: int | float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def _normal(value):
    """A snapshot value with its numbers in one form: 2 and 2.0 are the same duration (a plan read back
    from the database gives floats where the form gave whole numbers)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return _number_text(value)
    if isinstance(value, dict):
        return {str(k): _normal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    return str(value)


def plan_settings(plan_config: dict) -> dict:
    """A plan snapshot as it applies: a setting it leaves out or gives as null takes the engine's
    default (a document's plan section may name fewer settings than a portal plan, an older snapshot
    lacks newer ones), and no thresholds named is the default ones, which documents write out."""
    given = {key: value for key, value in (plan_config or {}).items() if value is not None}
    settings = {**PLAN_DEFAULTS, **given}
    settings["thresholds"] = thresholds_of(plan_config or {})
    return settings


def config_fingerprint(target_config: dict, plan_config: dict, server_config: dict) -> str:
    """Identical for runs made with the same target, plan and server configuration (repeats)."""
    return json.dumps(_normal([target_config or {}, plan_settings(plan_config), server_config or {}]),
                      sort_keys=True)


def config_text(value) -> str:
    """A configuration value as the "What changed" panels write it ('–' for nothing)."""
    if value is None or value == "" or value == [] or value == {}:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float):
        return _number_text(value)
    if isinstance(value, list | tuple):
        return ", ".join(config_text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(_normal(value), sort_keys=True)
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
    for key, value in sorted(plan_settings(plan_config).items()):
        if key == "thresholds":
            value = [format_threshold(t) for t in value]
        fields[PLAN_LABELS.get(key, f"Plan {key}")] = config_text(value)
    return fields


def config_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """'Server --max-running-requests: 64 → 128' for every field that differs, sorted by field."""
    names = sorted(set(before) | set(after))
    return [f"{name}: {before.get(name, '–')} → {after.get(name, '–')}" for name in names
            if before.get(name, "–") != after.get(name, "–")]
