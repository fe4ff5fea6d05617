"""The plan rule: one table of defaults and bounds for every plan and target field, and the one
function that checks a plan against it.

Every door that takes a plan (the plan form and the API through it, ingest, the CLI, the worker
through the engine) calls `normalize_plan` and shows its messages under the field they name, so a
value is refused everywhere with the same words. The operator's limits (`PlanLimits`) come in as
a parameter: the portal passes its settings, the CLI reads the same environment variables.
"""
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

from benchmarks.answers import answer_limit
from benchmarks.errors import ConfigError
from benchmarks.flavors import ENCODINGS
from benchmarks.inputs import LENGTHS, TOKENS_MOST, Lengths
from benchmarks.inputs import MODES as INPUT_MODES


@dataclass(frozen=True)
class PlanLimits:
    """What this installation lets a plan ask for; each has an environment variable (LIMIT_SETTINGS)."""

    max_levels: int = 32
    max_concurrency: int = 4096
    max_rate: float = 100_000.0
    max_level_seconds: float = 3600.0
    max_run_seconds: float = 12 * 3600.0
    # The longest vector a server may answer with, whatever it claims (it sizes every answer's cap).
    max_vector_length: int = 16_384
    # What one worker may hold for a plan's requests in flight (answers at their cap, request bodies).
    max_worker_memory_mib: int = 4096

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "PlanLimits":
        """The limits set in the environment (EMBPERF_MAX_*), the defaults for those not set."""
        environ = os.environ if environ is None else environ
        values = {}
        for field in fields(cls):
            name = LIMIT_SETTINGS[field.name]
            raw = (environ.get(name) or "").strip()
            if not raw:
                continue
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a number") from None
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name}={raw!r} must be a number above 0")
            values[field.name] = int(value) if field.type in (int, "int") else value
        return cls(**values)


# A request body's size per text: its tokens written out (a token is rarely more than 8 bytes of
# UTF-8 text, JSON escapes included) and the quotes and separators around the text.
REQUEST_BYTES_PER_TOKEN = 8
REQUEST_BYTES_PER_TEXT = 16

# The environment variable (and portal setting) that sets each limit.
LIMIT_SETTINGS = {
    "max_levels": "EMBPERF_MAX_LEVELS",
    "max_concurrency": "EMBPERF_MAX_CONCURRENCY",
    "max_rate": "EMBPERF_MAX_RATE",
    "max_level_seconds": "EMBPERF_MAX_LEVEL_SECONDS",
    "max_run_seconds": "EMBPERF_MAX_RUN_SECONDS",
    "max_vector_length": "EMBPERF_MAX_VECTOR_LENGTH",
    "max_worker_memory_mib": "EMBPERF_MAX_WORKER_MEMORY_MIB",
}


@dataclass(frozen=True)
class Bound:
    """One numeric plan field: its default and its range. `maximum` is a number, or the name of a
    PlanLimits attribute when the operator sets it."""

    label: str
    default: float | int | None
    minimum: float
    maximum: float | str
    unit: str = ""
    integer: bool = False
    optional: bool = False  # None is a valid value (it means "none" or "the server's default")
    above: bool = False  # the minimum itself is not allowed


# Plan fields that are not numbers, with their defaults.
PLAN_CHOICES = {
    "mode": ("closed", ("closed", "open")),
    "arrival": ("poisson", ("constant", "poisson")),
    "encoding": ("float", ENCODINGS),
    "input": ("unique", INPUT_MODES),
    # "levels" runs the plan's levels; "capacity" searches for the highest load that meets the SLO
    # (benchmarks/capacity.py); its levels are chosen by the search.
    "search": ("levels", ("levels", "capacity")),
    # How long each unique text is: every text `tokens` long ("fixed"), or each text's count drawn
    # from a distribution (benchmarks.inputs.Lengths; docs/request-shapes.md, "Length distributions").
    "length": ("fixed", LENGTHS),
}

PLAN_BOUNDS = {
    "max_in_flight": Bound("Max in flight", None, 1, "max_concurrency", integer=True, optional=True),
    "warmup_s": Bound("The warm-up", 5.0, 0, 3600, unit="s"),
    "duration_s": Bound("The measured duration", 120.0, 0, "max_level_seconds", unit="s", above=True),
    "tokens": Bound("Tokens per text", 512, 1, TOKENS_MOST, integer=True),
    # A uniform length: each text's count drawn from [tokens_min, tokens_max] (unset: half and one and
    # a half times `tokens`). A log-normal length: `tokens` is the median, tokens_sigma the spread of
    # the count's logarithm (unset: DEFAULT_TOKENS_SIGMA).
    "tokens_min": Bound("The shortest text", None, 1, TOKENS_MOST, unit="tokens", integer=True, optional=True),
    "tokens_max": Bound("The longest text", None, 1, TOKENS_MOST, unit="tokens", integer=True, optional=True),
    "tokens_sigma": Bound("The length spread (sigma)", None, 0, 3, optional=True, above=True),
    "batch": Bound("Texts per request", 1, 1, 2_048, integer=True),
    "dimensions": Bound("Dimensions", None, 1, "max_vector_length", integer=True, optional=True),
    "timeout_s": Bound("The request timeout", 30.0, 0, 600, unit="s", above=True),
    "abort_error_rate": Bound("The abort error rate", 0.5, 0, 1, above=True),
    "abort_window_s": Bound("The abort window", 10.0, 1, 3600, unit="s"),
    "slo_p99_ms": Bound("The latency SLO", None, 0, 600_000, unit="ms", optional=True, above=True),
    "slo_p90_ms": Bound("The p90 latency SLO", None, 0, 600_000, unit="ms", optional=True, above=True),
    "slo_p50_ms": Bound("The p50 latency SLO", None, 0, 600_000, unit="ms", optional=True, above=True),
    "slo_mean_ms": Bound("The mean latency SLO", None, 0, 600_000, unit="ms", optional=True, above=True),
    "slo_error_rate": Bound("The SLO's error rate", None, 0, 1, optional=True),
    "slo_goodput_share": Bound("The SLO's goodput share", None, 0, 1, optional=True, above=True),
    "capacity_precision": Bound("The capacity precision", 0.05, 0, 1, above=True),
    "capacity_trials": Bound("Trials at the capacity boundary", 2, 1, 10, integer=True),
    "capacity_budget_s": Bound("The capacity time budget", None, 0, "max_run_seconds", unit="s", optional=True,
                               above=True),
    "capacity_max_load": Bound("The capacity search's highest load", None, 0, "max_rate", optional=True,
                               above=True),
    "processes": Bound("Client processes", 1, 1, 64, integer=True),
    "seed": Bound("The seed", None, 0, 2**63 - 1, integer=True, optional=True),
}

# Every plan field with its default: the one home of plan defaults (model, CLI and engine read it).
PLAN_DEFAULTS = {
    "name": "",
    "mode": PLAN_CHOICES["mode"][0],
    "levels": [1],
    "arrival": PLAN_CHOICES["arrival"][0],
    **{name: bound.default for name, bound in PLAN_BOUNDS.items()},
    "encoding": PLAN_CHOICES["encoding"][0],
    "input": PLAN_CHOICES["input"][0],
    "search": PLAN_CHOICES["search"][0],
    "length": PLAN_CHOICES["length"][0],
    "corpus": None,
    # A shape axis (docs/request-shapes.md, "Shape axis"): one plan field swept across the levels, a grid
    # of len(shape_values) × len(levels) cells; None: no axis.
    "shape_field": None,
    "shape_values": None,
    "keep_samples": False,
    "thresholds": None,  # None: DEFAULT_THRESHOLDS; [] : no thresholds
}

# The plan fields a shape axis can sweep, and how many values it takes.
SHAPE_FIELDS = ("tokens", "batch", "encoding", "dimensions")
SHAPE_VALUES_FEWEST = 2
SHAPE_VALUES_MOST = 16

# Thresholds: a plan's pass/fail rules, one per figure and (optionally) per level, the way k6 thresholds
# work. Written "p99_ms <= 500" or "error_rate <= 0.01 at 16, 32"; stored as
# {"figure", "op", "limit", "levels"} (levels None: every level). Latency and error rate are upper
# bounds (<=), throughput lower bounds (>=). benchmarks.verdict judges a run against them.
THRESHOLD_FIGURES = {
    "p50_ms": ("<=", Bound("A p50 latency threshold", None, 0, 600_000, unit="ms", above=True)),
    "p90_ms": ("<=", Bound("A p90 latency threshold", None, 0, 600_000, unit="ms", above=True)),
    "p99_ms": ("<=", Bound("A p99 latency threshold", None, 0, 600_000, unit="ms", above=True)),
    "mean_ms": ("<=", Bound("A mean latency threshold", None, 0, 600_000, unit="ms", above=True)),
    "error_rate": ("<=", Bound("An error-rate threshold", None, 0, 1)),
    "qps": (">=", Bound("A requests/s threshold", None, 0, "max_rate", above=True)),
    "tokens_per_s": (">=", Bound("A tokens/s threshold", None, 0, 1e9, above=True)),
}
DEFAULT_THRESHOLDS = ({"figure": "error_rate", "op": "<=", "limit": 0.01, "levels": None},)
MAX_THRESHOLDS = 32
_THRESHOLD_RE = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|<|>|=)?\s*([^\s@]*)\s*(?:(?:@|\bat\b)\s*(.*))?$", re.I)

# Lists on a target: (label, fewest, most).
TARGET_LISTS = {
    "base_urls": ("base URLs", 1, 32),
    "metrics_urls": ("metrics URLs", 0, 8),
}


class FieldErrors(ConfigError):
    """A plan or target refused; `errors` maps each field (engine names) to its messages."""

    def __init__(self, section: str, errors: dict[str, list[str]]):
        self.section = section
        self.errors = errors
        super().__init__(" ".join(f"{section} {field}: {' '.join(messages)}" for field, messages in errors.items()))


def show(value) -> str:
    """A value the way a person types it: 1.0 -> '1', 0.5 -> '0.5', 1e300 -> '1e+300'."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return repr(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}" if abs(value) >= 1e15 else repr(float(value))


def _maximum(bound: Bound, limits: PlanLimits) -> tuple[float, str]:
    if isinstance(bound.maximum, str):
        return getattr(limits, bound.maximum), f" on this installation ({LIMIT_SETTINGS[bound.maximum]})"
    return bound.maximum, ""


def check_number(bound: Bound, value, limits: PlanLimits):
    """(the checked value, None) or (None, the message saying what is wrong with it)."""
    unit = f" {bound.unit}" if bound.unit else ""
    if value is None or value == "":
        if bound.optional:
            return None, None
        return None, f"{bound.label} is required."
    if isinstance(value, bool):
        return None, f"{bound.label} must be a number, not {show(value)}."
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, f"{bound.label} must be a number, not {show(value)}."
    if not math.isfinite(number):
        return None, f"{bound.label} must be a finite number, not {show(value)}."
    if bound.integer and not number.is_integer():
        return None, f"{bound.label} must be a whole number, not {show(number)}."
    if number < bound.minimum or (bound.above and number == bound.minimum):
        word = "greater than" if bound.above else "at least"
        return None, f"{bound.label} must be {word} {show(bound.minimum)}{unit}; {show(number)} is too low."
    maximum, where = _maximum(bound, limits)
    if number > maximum:
        return None, f"{bound.label} may be at most {show(maximum)}{unit}{where}; {show(number)} is too high."
    return (int(number) if bound.integer else number), None


def _check_levels(levels, mode: str, limits: PlanLimits) -> tuple[list, str | None]:
    if not isinstance(levels, list | tuple) or not levels:
        return [], "Enter at least one level, e.g. 1, 4, 8, 16."
    if len(levels) > limits.max_levels:
        return [], (f"At most {limits.max_levels} levels per plan on this installation (EMBPERF_MAX_LEVELS); "
                    f"{len(levels)} were given.")
    checked: list = []
    for value in levels:
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            return [], f"Level {show(value)} is not a number."
        if not math.isfinite(number):
            return [], f"Level {show(value)} is not a finite number."
        if number <= 0:
            return [], f"Levels must be greater than zero; {show(number)} is not."
        if mode == "closed":
            if not number.is_integer():
                return [], (f"Concurrency is a number of requests in flight, so a whole number; "
                            f"{show(number)} is not.")
            if number > limits.max_concurrency:
                return [], (f"Concurrency {show(number)} is above this installation's maximum of "
                            f"{limits.max_concurrency} (EMBPERF_MAX_CONCURRENCY).")
            number = int(number)
        elif number > limits.max_rate:
            return [], (f"Rate {show(number)} req/s is above this installation's maximum of "
                        f"{show(limits.max_rate)} req/s (EMBPERF_MAX_RATE).")
        if number in checked:
            return [], f"Level {show(number)} appears twice; each level must be different."
        checked.append(number)
    return checked, None


def format_threshold(threshold: Mapping) -> str:
    """A threshold the way a person writes it: "p99_ms <= 500", "error_rate <= 0.05 at 16, 32"."""
    limit = threshold["limit"]
    op = threshold.get("op") or THRESHOLD_FIGURES.get(threshold["figure"], ("<=",))[0]
    text = f"{threshold['figure']} {op} {show(limit) if not isinstance(limit, str) else limit}"
    if threshold.get("levels"):
        text += " at " + ", ".join(show(level) for level in threshold["levels"])
    return text


def parse_threshold(text: str) -> dict:
    """A written threshold ("p99_ms <= 500 at 16, 32") as a dict; ValueError says what is wrong."""
    match = _THRESHOLD_RE.match(text or "")
    if not match or not match.group(3):
        raise ValueError(f"Write a threshold as “figure <= number” (or “>=”), optionally “at” some levels, "
                         f"e.g. “p99_ms <= 500 at 16, 32”; {text.strip()!r} is not one.")
    figure, op, limit, levels = match.group(1).lower(), match.group(2), match.group(3), match.group(4)
    levels_list = None
    if levels is not None and levels.strip():
        levels_list = [part.strip() for part in re.split(r"[,\s]+", levels.strip()) if part.strip()]
    return {"figure": figure, "op": op or "", "limit": limit, "levels": levels_list}


def check_thresholds(value, plan_levels: list | None, limits: PlanLimits) -> tuple[list | None, str | None]:
    """(the checked thresholds, None) or (None, the message saying what is wrong with one of them).

    None stands for the default (error rate <= 1 % at every level); [] for no thresholds at all."""
    if value is None:
        return [dict(t) for t in DEFAULT_THRESHOLDS], None
    if isinstance(value, str):
        value = [line for line in value.splitlines() if line.strip()]
    if not isinstance(value, list | tuple):
        return None, "Thresholds are a list, one per figure, e.g. [\"p99_ms <= 500\", \"error_rate <= 0.01\"]."
    if len(value) > MAX_THRESHOLDS:
        return None, f"At most {MAX_THRESHOLDS} thresholds per plan; {len(value)} were given."
    checked = []
    for item in value:
        if isinstance(item, str):
            try:
                item = parse_threshold(item)
            except ValueError as exc:
                return None, str(exc)
        if not isinstance(item, Mapping):
            return None, f"A threshold is “figure <= number” or {{\"figure\", \"limit\"}}, not {show(item)}."
        unknown = set(item) - {"figure", "op", "limit", "levels"}
        if unknown:
            names = ", ".join(sorted(map(str, unknown)))
            return None, f"A threshold has figure, op, limit and levels; {names} is not one."
        figure = item.get("figure")
        if figure not in THRESHOLD_FIGURES:
            return None, (f"Thresholds can be set on {', '.join(THRESHOLD_FIGURES)}; "
                          f"{show(figure) if not isinstance(figure, str) else figure!r} is not one of them.")
        op, bound = THRESHOLD_FIGURES[figure]
        given = item.get("op") or op
        if given.rstrip("=") != op.rstrip("="):
            word = "an upper bound" if op == "<=" else "a lower bound"
            return None, f"{figure} is {word}: write “{figure} {op} number”, not “{given}”."
        limit, message = check_number(bound, item.get("limit"), limits)
        if message:
            return None, f"{message[:-1]} in “{figure}”." if message.endswith(".") else message
        levels = item.get("levels")
        if levels is not None:
            if isinstance(levels, int | float | str) and not isinstance(levels, bool):
                levels = [levels]
            if plan_levels is None:
                return None, (f"A capacity search chooses its own loads, so the threshold on {figure} cannot name "
                              "levels (“at ...”): it is judged at the capacity's level. Leave out “at”.")
            if not isinstance(levels, list | tuple) or not levels:
                return None, f"The levels of the threshold on {figure} are a list of the plan's levels."
            numbers = []
            for level in levels:
                try:
                    number = float(level) if not isinstance(level, bool) else math.nan
                except (TypeError, ValueError):
                    number = math.nan
                match = [p for p in plan_levels if float(p) == number]
                if not match:
                    named = level.strip() if isinstance(level, str) else show(level)
                    return None, (f"The threshold on {figure} names level {named}, which the plan does not "
                                  f"have (its levels: {', '.join(show(p) for p in plan_levels)}).")
                if match[0] not in numbers:
                    numbers.append(match[0])
            levels = numbers
        checked.append({"figure": figure, "op": op, "limit": limit, "levels": levels})
    return checked, None


# The latency figures an SLO can bound: plan field -> the level's `latency_ms` key.
SLO_LATENCY_FIELDS = {"slo_p99_ms": "p99", "slo_p90_ms": "p90", "slo_p50_ms": "p50", "slo_mean_ms": "mean"}


def has_latency_slo(plan: Mapping) -> bool:
    """Whether the plan bounds a latency figure (then every level reports its goodput)."""
    return any(plan.get(name) is not None for name in SLO_LATENCY_FIELDS)


def shape_plans(plan: Mapping) -> list[tuple[dict | None, dict]]:
    """Each shape of a checked plan, in order, as (its `{"field", "value"}`, the plan with that field set
    to the value); a plan without a shape axis has one: (None, the plan)."""
    field = plan.get("shape_field")
    if not field:
        return [(None, dict(plan))]
    return [({"field": field, "value": value}, {**plan, field: value}) for value in plan.get("shape_values") or []]


def plan_cells(plan: Mapping) -> list[dict]:
    """The levels a plan runs, in order: `{"index", "shape", "load"}` for each load level of each shape
    (the shape outer, in the order given; `shape` None without an axis). `index` runs over the grid."""
    cells = []
    for shape, _ in shape_plans(plan):
        for load in plan.get("levels") or []:
            cells.append({"index": len(cells), "shape": shape, "load": load})
    return cells


def planned_seconds(plan: Mapping) -> float:
    """The longest a plan may take: every level's warm-up, measured duration and a last timeout (every
    cell of a shape axis's grid).

    A capacity search is bounded by its time budget (the installation's run limit when it sets none),
    plus the one level that may be running when the budget runs out."""
    per_level = sum(float(plan.get(key) or 0) for key in ("warmup_s", "duration_s", "timeout_s"))
    if plan.get("search") == "capacity":
        budget = plan.get("capacity_budget_s")
        return float(budget) + per_level if budget else math.inf
    return len(plan_cells(plan)) * per_level


def in_flight_most(plan: Mapping) -> int:
    """The most requests a plan can have in flight at once on one worker."""
    if plan.get("mode") == "open":
        return int(plan.get("max_in_flight") or 1)
    most = max(int(level) for level in plan.get("levels") or [1])
    cap = plan.get("max_in_flight")
    return min(most, int(cap)) if cap else most


def median_tokens(plan: Mapping) -> int:
    """The token count a plan's texts centre on, which calibration aims at: `tokens` (fixed: every
    text's; log-normal: the median), or the middle of a uniform length's range."""
    return Lengths.from_plan(plan).median


def longest_tokens(plan: Mapping) -> int:
    """The longest text a plan sends (benchmarks.inputs.Lengths.longest): `tokens`, a uniform length's
    `tokens_max`, or a log-normal length's 99.9th percentile."""
    return Lengths.from_plan(plan).longest


def worst_case_bytes(plan: Mapping, limits: PlanLimits) -> int:
    """What a worker may hold for a plan at once: every request in flight with its body and an answer
    at its cap (answers.answer_limit for the plan's vector length, or the installation's maximum).
    A body is sized at the longest text the plan's length sends (`longest_tokens`). With a shape axis,
    the largest of its shapes (its most tokens, texts per request or dimensions)."""
    if plan.get("shape_field") and plan.get("shape_values"):
        return max(_shape_bytes(shaped, limits) for _, shaped in shape_plans(plan))
    return _shape_bytes(plan, limits)


def _shape_bytes(plan: Mapping, limits: PlanLimits) -> int:
    texts = int(plan.get("batch") or 1)
    dims = plan.get("dimensions") or limits.max_vector_length
    body = texts * (longest_tokens(plan) * REQUEST_BYTES_PER_TOKEN + REQUEST_BYTES_PER_TEXT)
    return in_flight_most(plan) * (answer_limit(texts, dims) + body)


def _mib(n_bytes: float) -> str:
    """A memory figure for messages: '8,200 GiB', '6.1 GiB', '0.82 MiB'."""
    if n_bytes >= 2**30:
        gib = n_bytes / 2**30
        return f"{gib:,.0f} GiB" if gib >= 100 else f"{gib:.1f} GiB".replace(".0 GiB", " GiB")
    mib = n_bytes / 2**20
    return f"{mib:,.0f} MiB" if mib >= 10 else f"{mib:.2g} MiB"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.3g} h" if seconds >= 3600 else f"{seconds:.0f} s"


def plan_errors(plan: Mapping, limits: PlanLimits | None = None) -> tuple[dict, dict[str, list[str]]]:
    """(the plan with defaults filled in and values checked, {field: [messages]}); no errors when valid."""
    limits = limits or PlanLimits()
    out = dict(PLAN_DEFAULTS)
    # None keeps the default, except where None is a value of its own ("no cap", "server's default").
    optional = {name for name, bound in PLAN_BOUNDS.items() if bound.optional} | {"corpus"}
    out.update({k: v for k, v in plan.items() if v is not None or k in optional})
    errors: dict[str, list[str]] = {}
    for name, (_, choices) in PLAN_CHOICES.items():
        if out[name] not in choices:
            errors[name] = [f"Choose one of {', '.join(choices)}; {show(out[name])} is not one of them."]
    for name, bound in PLAN_BOUNDS.items():
        out[name], message = check_number(bound, out[name], limits)
        if message:
            errors[name] = [message]
    out["levels"], message = _check_levels(out["levels"], out["mode"], limits)
    if message:
        errors["levels"] = [message]
    out["keep_samples"] = bool(out["keep_samples"])
    capacity = out["search"] == "capacity"
    if "levels" not in errors or capacity:
        # A capacity search chooses its own loads: its thresholds are judged at the capacity's level.
        out["thresholds"], message = check_thresholds(out["thresholds"], None if capacity else out["levels"], limits)
        if message:
            errors["thresholds"] = [message]
    if "abort_window_s" not in errors and "duration_s" not in errors and out["abort_window_s"] > out["duration_s"]:
        # A window longer than the level could never fill, so the policy would never stop a level:
        # the window is the level's measured duration at most (the plan form says so), and never below
        # its own minimum, so that a plan checked twice (saved, then run) reads the same both times.
        out["abort_window_s"] = max(out["duration_s"], PLAN_BOUNDS["abort_window_s"].minimum)
    _check_length(out, errors)
    if out["input"] == "corpus" and not out["corpus"]:
        errors["corpus"] = ["The corpus input needs texts: give one per line, or choose another input mode."]
    if out["mode"] == "open" and out["max_in_flight"] is None and "mode" not in errors:
        # An open loop always has a cap: a stalled server must not make the client open sockets without end.
        out["max_in_flight"] = limits.max_concurrency
    if out["search"] == "capacity" and "search" not in errors:
        _check_capacity(out, errors, limits)
    _check_shape(out, errors, limits)
    if not errors and out["search"] != "capacity":
        total = planned_seconds(out)
        if total > limits.max_run_seconds:
            cells = len(plan_cells(out))
            counted = f"{cells} cells" if out["shape_field"] else f"{len(out['levels'])} levels"
            errors["levels"] = [
                f"This plan may take up to {_hours(total)} ({counted} × (warm-up + duration + "
                f"timeout)), above this installation's limit of {_hours(limits.max_run_seconds)} "
                "(EMBPERF_MAX_RUN_SECONDS); use fewer or shorter levels"
                + (" or fewer shapes." if out["shape_field"] else ".")
            ]
        worst = worst_case_bytes(out, limits)
        budget = limits.max_worker_memory_mib * 2**20
        if not errors and worst > budget:
            # With a shape axis the message is the largest shape's (the one that sets the worst case).
            largest = max((shaped for _, shaped in shape_plans(out)), key=lambda p: _shape_bytes(p, limits))
            texts = largest["batch"]
            errors["levels"] = [
                f"This plan may hold up to {_mib(worst)} on a worker ({in_flight_most(out):,} requests in flight × "
                f"{texts:,} texts per request × up to {_mib(worst / in_flight_most(out) / texts)} "
                f"per text for the answer and the request"
                + (f", at its largest shape, {out['shape_field']} {_shape_text(largest[out['shape_field']])}"
                   if out["shape_field"] else "")
                + f"), above this installation's budget of "
                f"{_mib(budget)} per worker (EMBPERF_MAX_WORKER_MEMORY_MIB); lower the concurrency (or max in "
                "flight), the texts per request, the tokens per text"
                + (" (the longest of its length distribution)" if out["length"] != "fixed" else "")
                + " or the dimensions."
            ]
    return out, errors


def _shape_text(value) -> str:
    return value if isinstance(value, str) else show(value)


def _shape_value_list(value) -> list | None:
    """Shape values as given: a list, or a string of values separated by commas ("32, 128, 512")."""
    if value is None:
        return None
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _check_shape(out: dict, errors: dict[str, list[str]], limits: PlanLimits) -> None:
    """A shape axis: a field it can sweep, 2 to 16 different values within that field's own bounds, a
    grid within the installation's level limit, and no capacity search or length distribution in the way."""
    field = out["shape_field"]
    values = _shape_value_list(out["shape_values"])
    if field is None or field == "":
        out["shape_field"] = None
        if values:
            errors["shape_values"] = [
                f"Shape values need a shape field: choose the field they set ({', '.join(SHAPE_FIELDS)}), or "
                "leave shape_values empty."]
        out["shape_values"] = None
        return
    if field not in SHAPE_FIELDS:
        errors["shape_field"] = [f"A shape axis sweeps one of {', '.join(SHAPE_FIELDS)}; "
                                 f"{show(field) if not isinstance(field, str) else repr(field)} is not one of them."]
        return
    if out["search"] == "capacity":
        errors["shape_field"] = [
            "A capacity search chooses its loads itself, so it cannot also sweep a shape across them: run one "
            f"capacity plan per shape (set {field} to each value in turn), or choose the levels search."]
        return
    if field == "tokens" and out["length"] != "fixed" and "length" not in errors:
        errors["shape_field"] = [
            f"A tokens axis sets the fixed length of each cell, so it needs length fixed; this plan's length is "
            f"{out['length']}: choose length fixed, or sweep another field."]
        return
    if field == "tokens" and out["input"] == "corpus":
        errors["shape_field"] = ["A tokens axis sets the length of generated texts; a corpus is sent as it is, so its "
                                 "texts keep their own lengths: choose the unique input, or sweep another field."]
        return
    if not values:
        example = "float, base64" if field == "encoding" else "32, 128, 512" if field == "tokens" else "1, 8, 32"
        errors["shape_values"] = [f"A shape axis on {field} needs its values: give {SHAPE_VALUES_FEWEST} to "
                                  f"{SHAPE_VALUES_MOST} different values, e.g. {example}."]
        return
    checked: list = []
    for value in values:
        if field == "encoding":
            if value not in ENCODINGS:
                errors["shape_values"] = [f"Encoding values are {' or '.join(ENCODINGS)}; "
                                          f"{show(value) if not isinstance(value, str) else repr(value)} is not one."]
                return
            number = value
        else:
            bound = PLAN_BOUNDS[field]
            if value is None or value == "":
                errors["shape_values"] = [f"{bound.label} values are whole numbers; give each one."]
                return
            number, message = check_number(bound, value, limits)
            if message:
                errors["shape_values"] = [message]
                return
        if number in checked:
            errors["shape_values"] = [f"Shape value {_shape_text(number)} appears twice; each value of the {field} "
                                      "axis must be different."]
            return
        checked.append(number)
    if not SHAPE_VALUES_FEWEST <= len(checked) <= SHAPE_VALUES_MOST:
        errors["shape_values"] = [f"A shape axis has {SHAPE_VALUES_FEWEST} to {SHAPE_VALUES_MOST} values; "
                                  f"{len(checked)} {'was' if len(checked) == 1 else 'were'} given."
                                  + (f" One value is a plain plan: set {field} instead." if len(checked) == 1 else "")]
        return
    out["shape_values"] = checked
    if "levels" not in errors:
        cells = len(checked) * len(out["levels"])
        if cells > limits.max_levels:
            errors["shape_values"] = [
                f"{len(checked)} shapes × {len(out['levels'])} levels = {cells} cells, above this installation's "
                f"limit of {limits.max_levels} levels per plan (EMBPERF_MAX_LEVELS); use fewer shapes or levels."]


# A log-normal length without tokens_sigma: p10 to p90 of about 0.53 to 1.9 times the median.
DEFAULT_TOKENS_SIGMA = 0.5


def _check_length(out: dict, errors: dict[str, list[str]]) -> None:
    """A length distribution's own fields: each only with its distribution, a uniform range in order,
    and unique texts only (a corpus is sent as it is, a repeated text is one text)."""
    length = out["length"]
    if "length" in errors:
        return
    for name, owner in (("tokens_min", "uniform"), ("tokens_max", "uniform"), ("tokens_sigma", "lognormal")):
        if out[name] is not None and length != owner and name not in errors:
            errors[name] = [f"{PLAN_BOUNDS[name].label} is set by a {owner} length; this plan's length is "
                            f"{length}: choose length {owner}, or leave {name} empty."]
    if length != "fixed" and out["input"] != "unique" and "input" not in errors:
        why = ("a corpus is sent as it is, so its texts keep their own lengths" if out["input"] == "corpus"
               else "a repeated input is one text of `tokens` tokens")
        errors["length"] = [f"A {length} length applies to unique texts only; {why}. Choose length fixed, "
                            "or the unique input."]
    if "tokens" in errors:
        return
    if length == "uniform":
        tokens = out["tokens"]
        defaulted = out["tokens_min"] is None or out["tokens_max"] is None
        if out["tokens_min"] is None and "tokens_min" not in errors:
            out["tokens_min"] = max(1, round(tokens / 2))
        if out["tokens_max"] is None and "tokens_max" not in errors:
            out["tokens_max"] = min(TOKENS_MOST, round(tokens * 3 / 2))
        low, high = out["tokens_min"], out["tokens_max"]
        if low is not None and high is not None and low > high:
            errors["tokens_min"] = [
                f"The shortest text ({show(low)} tokens) is longer than the longest ({show(high)} tokens); give "
                "tokens_min at most tokens_max"
                + (" (unset, tokens_min is half of tokens and tokens_max one and a half times it)." if defaulted
                   else ".")]
    elif length == "lognormal" and out["tokens_sigma"] is None and "tokens_sigma" not in errors:
        out["tokens_sigma"] = DEFAULT_TOKENS_SIGMA


def _check_capacity(out: dict, errors: dict[str, list[str]], limits: PlanLimits) -> None:
    """A capacity search needs an SLO, a budget within the run limit and a highest load within the
    installation's bounds; its levels are the search's, so the plan's own are not judged."""
    errors.pop("levels", None)
    out["levels"] = out["levels"] or [1]
    if not has_latency_slo(out) and out.get("slo_error_rate") is None:
        errors["slo_p99_ms"] = ["A capacity search needs an SLO: set a latency limit (p99, p90, p50 or mean) "
                                "or an error rate."]
    if out.get("capacity_budget_s") is None:
        out["capacity_budget_s"] = limits.max_run_seconds
    highest = limits.max_concurrency if out["mode"] == "closed" else limits.max_rate
    load = out.get("capacity_max_load")
    if load is None:
        out["capacity_max_load"] = highest
    elif load > highest:
        closed = out["mode"] == "closed"
        unit, name = ("concurrency", "EMBPERF_MAX_CONCURRENCY") if closed else ("req/s", "EMBPERF_MAX_RATE")
        errors["capacity_max_load"] = [f"The capacity search's highest load may be at most {show(highest)} {unit} "
                                       f"on this installation ({name}); {show(load)} is too high."]
    elif out["mode"] == "closed" and not float(load).is_integer():
        errors["capacity_max_load"] = [f"Concurrency is a whole number; {show(load)} is not."]


def normalize_plan(plan: Mapping, limits: PlanLimits | None = None) -> dict:
    """The plan with defaults filled in and every value checked; FieldErrors names each bad field."""
    out, errors = plan_errors(plan, limits)
    if errors:
        raise FieldErrors("plan", errors)
    return out


def target_list_errors(target: Mapping) -> dict[str, list[str]]:
    """{field: [message]} for a target's lists outside their bounds (base URLs, metrics URLs)."""
    errors = {}
    for name, (label, fewest, most) in TARGET_LISTS.items():
        values = target.get(name) or []
        if isinstance(values, str):
            values = [values]
        if len(values) > most:
            errors[name] = [f"At most {most} {label} per target; {len(values)} were given."]
        elif len(values) < fewest:
            errors[name] = [f"Give at least {fewest} of the {label}."]
    return errors


def time_limit_seconds(plan: Mapping, limits: PlanLimits | None = None) -> float:
    """The planned time of a plan, never more than the installation's run limit (for task time limits)."""
    limits = limits or PlanLimits()
    try:
        total = planned_seconds(plan)
    except (TypeError, ValueError):
        total = limits.max_run_seconds
    if not math.isfinite(total) or total < 0:
        return limits.max_run_seconds
    return min(total, limits.max_run_seconds)
