"""A sweep: probe, calibrate, then run each level of a plan and return the result document.

`run_sweep` is synchronous. The load runs in its own thread or processes (`pool.py`); this
thread is the controller: it merges the per-second reports of the load processes, calls the
progress callback, applies the abort policy, watches the cancel token, drives telemetry and
assembles each level. A finished level is handed to `on_level` before anything else can go wrong.
"""
import logging
import secrets
import time
import uuid
from collections.abc import Callable

from benchmarks import plan as plan_rule
from benchmarks import slo as slo_rule
from benchmarks.control import CancelToken
from benchmarks.document import (
    SCHEMA,
    build_level,
    client_info,
    merge_second,
    public_target,
    summarize,
    utc_now,
)
from benchmarks.errors import ConfigError, SweepError
from benchmarks.flavors import FLAVORS, NORM_TOLERANCE, make_flavor
from benchmarks.inputs import InputSource, Lengths, fit_length
from benchmarks.outbound import OutboundPolicy
from benchmarks.plan import PlanLimits
from benchmarks.probe import probe_texts
from benchmarks.tokens import (
    ESTIMATE,
    TOKENIZER,
    USAGE,
    TokenizerPolicy,
    check_usage,
    count,
    load_tokenizer,
    ratio_note,
    resolve_tokenizer,
)
from benchmarks.verdict import judge_run

logger = logging.getLogger(__name__)

POLL_S = 0.1  # how often the controller looks at cancel, telemetry and the runners' messages
CHARS_PER_TOKEN_GUESS = 4.0  # starting point of calibration, and the estimate when no usage comes back
TOKENIZER_CHECK_TEXTS = 20  # texts cut by the tokenizer and counted again before the first level

def normalize_plan(plan: dict, limits: PlanLimits | None = None) -> dict:
    """The plan with defaults filled in and every value checked (benchmarks.plan holds the rule)."""
    return plan_rule.normalize_plan(plan, limits)


def normalize_target(target: dict) -> dict:
    """The target with its flavor and base URLs checked."""
    out = dict(target)
    out.setdefault("flavor", "openai")
    if out["flavor"] not in FLAVORS:
        raise ConfigError(f"target flavor must be one of {', '.join(FLAVORS)}, not {out['flavor']!r}")
    urls = out.get("base_urls")
    if isinstance(urls, str):
        urls = [urls]
    if not urls:
        raise ConfigError("the target has no base URL")
    for url in urls:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"base URL {url!r} must start with http:// or https://")
    out["base_urls"] = list(urls)
    errors = plan_rule.target_list_errors(out)
    if errors:
        raise plan_rule.FieldErrors("target", errors)
    tokenizer = out.get("tokenizer")
    if tokenizer is not None and not isinstance(tokenizer, str):
        raise ConfigError(f"target tokenizer must be a model id or a path, not {tokenizer!r}")
    if not out.get("model") and out["flavor"] != "tei":
        raise ConfigError("the target needs a model name")
    return out


def check_combination(target: dict, plan: dict) -> None:
    """Raise ConfigError when the plan (any shape of its axis) asks for something the target's flavor cannot do."""
    for _, shaped in plan_rule.shape_plans(plan):
        make_flavor(target["flavor"], target.get("model", ""), dimensions=shaped["dimensions"],
                    encoding=shaped["encoding"])


class AbortWatch:
    """The abort policy of one level: the error rate above `threshold` for `window_s` seconds in a row.

    Only measured seconds count (warm-up and drain do not). A second with fewer than MIN_RESULTS
    answers cannot tell a rate from chance: three answers, two of them wrong, in a second the host
    starved the client of CPU is no failing server. Such a second is pooled with the seconds after it
    until the pool holds MIN_RESULTS answers; the pool's rate then decides for every second it spans
    (silent seconds inside it included, so a server whose every request times out is still caught).
    Seconds with no answer and nothing pooled neither count nor reset the run of bad seconds. A second
    in which the target refused connections and nothing succeeded is bad at once: the client's back-off
    makes few attempts in an outage, and a refused connection is no chance outcome."""

    MIN_RESULTS = 10

    def __init__(self, threshold: float, window_s: float):
        self.threshold = threshold
        self.window_s = window_s
        self.bad_seconds = 0
        self._ok = self._errors = 0
        self._first: int | None = None

    def add(self, sec: int, ok: int, errors: int, refused: bool = False) -> bool:
        """Take one measured second's counts; True when the policy fires. `refused`: nothing succeeded
        and the target still refused connections at the second's end, a bad second however few
        attempts the client's back-off made in it."""
        if self._first is None:
            if ok + errors == 0 and not refused:
                return False
            self._first = sec
        self._ok += ok
        self._errors += errors
        total = self._ok + self._errors
        if total < self.MIN_RESULTS and not refused:
            return False
        span = sec - self._first + 1
        if refused or self._errors / total > self.threshold:
            self.bad_seconds += span
        else:
            self.bad_seconds = 0
        self._ok = self._errors = 0
        self._first = None
        return self.bad_seconds >= self.window_s


class Sweep:
    """One run of a plan against a target (use `run_sweep`)."""

    def __init__(self, target, plan, *, cancel, on_progress, on_level, telemetry, samples_sink, run_info,
                 outbound=None, limits=None, tokenizers=None, done_indices=None):
        self.target = normalize_target(target)
        self.outbound = outbound if outbound is not None else OutboundPolicy.from_environment()
        self.limits = limits or PlanLimits()
        self.tokenizers = tokenizers or TokenizerPolicy()
        self.plan = normalize_plan(plan, self.limits)
        check_combination(self.target, self.plan)
        # The grid: every (shape, load) cell in order; without a shape axis, the plan's levels.
        self.cells = plan_rule.plan_cells(self.plan)
        # Cells a run this one resumes already measured: skipped, their indices kept for the rest.
        self.done_indices = {int(i) for i in done_indices or ()}
        # The plan of the shape being run: the plan with the axis's field set to the shape's value.
        self.cell_plan = self.plan
        self.shape: dict | None = None
        self._shape_index = None  # which shape of the axis is probed and calibrated now
        self._shapes_probed: list[dict] = []  # each shape's probe and calibration (`inputs.shapes`)
        self._tokenizer = None
        self._tokenizer_loaded = False
        self.cancel = cancel or CancelToken()
        self.on_progress = on_progress
        self.on_level = on_level
        self.telemetry = telemetry
        self.samples_sink = samples_sink
        self.run_info = dict(run_info or {})
        self.levels: list[dict] = []
        self.started_mono = time.monotonic()
        self.salt = secrets.token_hex(3)
        self.probe: dict = {}
        self.inputs: dict = {}
        self.dims = None
        self.unit_norm = False
        self.tokens_per_text_estimate = None
        self.chars_per_text = 1
        self.tokenizer_path = None
        self.token_source = None
        self.status = "succeeded"
        self.status_reason = ""
        self.aborted_at_level = None  # the load of the level the abort policy stopped the sweep at
        self.telemetry_notes: list[str] = []
        self._telemetry_closed = False
        self.idle_latencies_ms: list[float] = []  # requests sent alone (calibration): what "idle" means
        self.capacity: dict | None = None  # a capacity plan's answer (benchmarks/capacity.py)
        self.current_load = None  # the load of the level running now

    # ---- progress --------------------------------------------------------------------------

    def _progress(self, **fields) -> None:
        if self.on_progress is None:
            return
        plan = self.plan
        per_level = plan["warmup_s"] + plan["duration_s"]
        index = fields.get("level_index", 0)
        elapsed_in_level = fields.get("level_elapsed_s", 0.0)
        cells = self.cells
        remaining = max(0.0, per_level - elapsed_in_level) + per_level * (len(cells) - index - 1)
        levels_total = len(cells)
        load = cells[index]["load"] if index < len(cells) else None
        shape = cells[index]["shape"] if index < len(cells) else None
        if plan["search"] == "capacity":
            # The search picks its levels as it goes: what is left is its time budget.
            levels_total, load = index + 1, self.current_load
            remaining = max(0.0, plan["capacity_budget_s"] - (time.monotonic() - self.started_mono))
        progress = {
            "level_index": index,
            "levels_total": levels_total,
            "load": load,
            **({"shape": shape} if shape else {}),
            "phase": fields.get("phase", "measure"),
            "level_elapsed_s": round(elapsed_in_level, 2),
            "level_total_s": per_level,
            "run_elapsed_s": round(time.monotonic() - self.started_mono, 2),
            "run_eta_s": round(remaining, 1),
            "second": fields.get("second"),
            "completed": fields.get("completed", 0),
            "failed": fields.get("failed", 0),
            "telemetry": self._latest_telemetry(),
        }
        try:
            self.on_progress(progress)
        except Exception:  # live progress is a view; it must never cost the measurement
            logger.exception("the progress callback failed; the sweep goes on")

    def _latest_telemetry(self):
        if self.telemetry is None:
            return None
        try:
            return self.telemetry.latest()
        except Exception:  # telemetry never breaks a sweep
            return None

    # ---- probe and calibration -------------------------------------------------------------

    @property
    def cell_salt(self) -> str:
        """The salt of the running shape's texts: the run's for the first shape (and without an axis),
        one of its own for each other shape, whose input streams start again: texts stay unique."""
        return self.salt if not self._shape_index else f"{self.salt}s{self._shape_index}."

    def _begin_shape(self, shape_index: int) -> None:
        """Make shape `shape_index` of the axis the running one: its plan, and a probe and calibration
        of its own (its dimensions and encoding are probed, its tokens calibrated). The document's
        `probe` and `inputs` stay the first shape's; `inputs.shapes` holds each shape's."""
        shape, shaped = plan_rule.shape_plans(self.plan)[shape_index]
        self._shape_index, self.shape, self.cell_plan = shape_index, shape, shaped
        first_probe, first_inputs = self.probe, self.inputs
        self._probe_and_calibrate()
        if shape is None:
            return
        self._shapes_probed.append({**shape, "probe": self.probe, "calibration": self.inputs["calibration"]})
        if len(self._shapes_probed) > 1:
            self.probe, self.inputs = first_probe, first_inputs
        self.inputs["shapes"] = self._shapes_probed

    def _shape_config(self) -> dict:
        """What the load processes build a shape's requests from (benchmarks/pool.py, SHAPE_CONFIG)."""
        plan = self.cell_plan
        return {"dimensions": plan["dimensions"], "encoding": plan["encoding"], "batch": plan["batch"],
                "chars_per_text": self.chars_per_text, "salt": self.cell_salt,
                "tokens": plan_rule.median_tokens(plan), "lengths": Lengths.from_plan(plan)}

    def _send(self, texts: list[str]) -> dict:
        plan = self.cell_plan
        result = probe_texts(self.target, texts, dimensions=plan["dimensions"], encoding=plan["encoding"],
                             timeout_s=min(plan["timeout_s"], 60), outbound=self.outbound,
                             max_vector_length=self.limits.max_vector_length)
        if result.get("latency_ms") is not None:
            self.idle_latencies_ms.append(result["latency_ms"])
        if not result["ok"]:
            message = result["error"] + (f" (hint: {result['hint']})" if result.get("hint") else "")
            raise SweepError(message)
        return result

    def _full_length_unit_norm(self, text: str) -> bool:
        """Whether the server's full-length vector of `text` is a unit vector: one request without
        'dimensions'. Then every answer cut to the plan's dimensions must be a unit vector too."""
        plan = self.cell_plan
        result = probe_texts(self.target, [text], dimensions=None, encoding=plan["encoding"],
                             timeout_s=min(plan["timeout_s"], 60), outbound=self.outbound,
                             max_vector_length=self.limits.max_vector_length)
        if not result["ok"] or result.get("norm") is None:
            return False
        self.probe["full_length_norm"] = round(result["norm"], 6)
        return abs(result["norm"] - 1) <= NORM_TOLERANCE

    def _load_tokenizer(self):
        """The target's tokenizer (fetched once into the data folder, read once per sweep), or None when
        it names none."""
        spec = self.target.get("tokenizer")
        if not spec:
            return None
        if not self._tokenizer_loaded:
            try:
                self.tokenizer_path = resolve_tokenizer(spec, policy=self.tokenizers, outbound=self.outbound)
                self._tokenizer = load_tokenizer(self.tokenizer_path, self.tokenizers.max_bytes)
            except ConfigError as exc:
                raise SweepError(str(exc)) from None
            self._tokenizer_loaded = True
        return self._tokenizer

    def _probe_and_calibrate(self) -> None:
        """Probe the target with the running shape's request (its dimensions and encoding) and calibrate
        its texts to its tokens; a shape axis does this again for each shape (`_begin_shape`)."""
        plan = self.cell_plan
        # A length distribution is calibrated at the count its texts centre on (its median).
        aim = plan_rule.median_tokens(plan)
        tokenizer = self._load_tokenizer()
        sampler = InputSource("unique", salt=self.cell_salt + "c", seed=plan["seed"], stream_index=99)
        guess = max(1, round(aim * CHARS_PER_TOKEN_GUESS))
        first_text = sampler.sample_text(guess)
        first = self._send([first_text])
        self.probe = {k: first[k] for k in ("served_model", "vector_length", "prompt_tokens", "latency_ms")}
        self.dims = plan["dimensions"] or first["vector_length"]
        if plan["dimensions"]:
            # A text of its own stream: the calibration's texts stay those of its seed.
            own = InputSource("unique", salt=self.cell_salt + "n", seed=plan["seed"], stream_index=97)
            norm_text = own.sample_text(guess)
            self.unit_norm = self._full_length_unit_norm(norm_text)
        else:
            self.unit_norm = False
        mode = plan["input"]
        calibration = {"target_tokens": aim, "chars_per_text": None, "chars_per_token": None,
                       "measured_tokens": None, "estimated": False}
        self.chars_per_text = guess
        # Two texts of known length, sent alone, tell what the server's usage counts.
        samples = [(first_text, first["prompt_tokens"])]
        if first["prompt_tokens"] is not None:
            short_text = sampler.sample_text(max(1, guess // 2))
            samples.insert(0, (short_text, self._send([short_text])["prompt_tokens"]))
        usage = check_usage(samples)
        tokens = {"source": None, "tokenizer": self.target.get("tokenizer") or None, "usage": usage.kind,
                  "usage_note": usage.note, "usage_ratio": None, "note": None}
        if tokenizer is not None:
            tokens["source"] = TOKENIZER
            if usage.kind != "none":
                counted = [(count(tokenizer, text), n) for text, n in samples if n is not None]
                tokens["usage_ratio"] = round(sum(n for _, n in counted) / sum(c for c, _ in counted), 3)
                if usage.usable:
                    tokens["note"] = ratio_note(tokens["usage_ratio"])
            self._calibrate_with_tokenizer(tokenizer, calibration)
        elif mode == "corpus":
            texts = plan["corpus"]
            self.tokens_per_text_estimate = sum(len(t) for t in texts) / len(texts) / CHARS_PER_TOKEN_GUESS
            calibration["target_tokens"] = None
            tokens["source"] = USAGE if usage.usable else ESTIMATE
        elif usage.usable:
            tokens["source"] = USAGE
            sample_chars = [(max(1, guess // 2), samples[0][1]), (guess, samples[1][1])]
            chars = fit_length(sample_chars, aim)
            text = sampler.sample_text(chars)
            measured = self._send([text])["prompt_tokens"]
            # One refinement step when the straight-line fit missed by more than 2 %.
            if measured and abs(measured - aim) > 0.02 * aim:
                chars = fit_length([sample_chars[0], (chars, measured)], aim)
                text = sampler.sample_text(chars)
                measured = self._send([text])["prompt_tokens"]
            self.chars_per_text = chars
            self.tokens_per_text_estimate = measured or aim
            calibration.update(chars_per_text=chars, measured_tokens=measured,
                               chars_per_token=round(len(text) / measured, 3) if measured else None)
        else:
            # No usable usage (none, or not a token count): size texts by a typical ratio and say the
            # tokens are estimated.
            tokens["source"] = ESTIMATE
            self.tokens_per_text_estimate = aim
            calibration.update(chars_per_text=guess, chars_per_token=CHARS_PER_TOKEN_GUESS, estimated=True)
        self.token_source = tokens["source"]
        self.inputs = {"mode": mode, "cache_study": mode == "repeat", "calibration": calibration,
                       "tokens": tokens, "corpus_reused": 0}

    def _calibrate_with_tokenizer(self, tokenizer, calibration: dict) -> None:
        """Texts cut by the tokenizer: check a few of them with it, and send one to see the server's count."""
        plan = self.cell_plan
        aim = plan_rule.median_tokens(plan)
        if plan["input"] == "corpus":
            counts = [count(tokenizer, text) for text in plan["corpus"]]
            self.tokens_per_text_estimate = sum(counts) / len(counts)
            calibration.update(target_tokens=None, tokenizer_tokens={"min": min(counts), "max": max(counts)})
            return
        cut = InputSource("unique", salt=self.cell_salt + "t", seed=plan["seed"], stream_index=98,
                          tokenizer=tokenizer, tokens_per_text=aim)
        texts = [cut.next_texts()[0] for _ in range(TOKENIZER_CHECK_TEXTS)]
        counts = [count(tokenizer, text) for text in texts]
        measured = self._send([texts[0]])["prompt_tokens"]
        chars = sum(len(t) for t in texts) / len(texts)
        self.tokens_per_text_estimate = aim
        self.chars_per_text = round(chars)
        calibration.update(chars_per_text=round(chars), chars_per_token=round(chars * len(counts) / sum(counts), 3),
                           measured_tokens=measured, tokenizer_tokens={"min": min(counts), "max": max(counts)})

    # ---- levels ----------------------------------------------------------------------------

    def _work_by_process(self, index: int, load: float, processes: int, t0: float,
                         mode: str | None = None) -> dict[int, dict]:
        """What each load process is to do in this level: its share of the load, the common timing."""
        plan = self.plan
        mode = mode or plan["mode"]
        common = {
            "index": index, "mode": mode, "t0": t0, "warmup_s": plan["warmup_s"],
            "duration_s": plan["duration_s"], "timeout_s": plan["timeout_s"], "dims": self.dims,
            "unit_norm": self.unit_norm,
            "max_vector_length": self.limits.max_vector_length,
            "keep_samples": plan["keep_samples"], "arrival": plan["arrival"],
            "tokens_per_text_estimate": self.tokens_per_text_estimate, "token_source": self.token_source,
            # A shape axis: the running shape's requests (the load processes rebuild them when it changes).
            "shape_config": self._shape_config() if self.shape is not None else None,
        }
        work_by_process = {}
        if mode == "closed":
            for proc in range(processes):
                share = load // processes + (1 if proc < load % processes else 0)
                if share:
                    work_by_process[proc] = dict(common, concurrency=share)
        else:
            cap = plan["max_in_flight"]
            for proc in range(processes):
                seed = None if plan["seed"] is None else plan["seed"] + 1000 * index + proc
                work_by_process[proc] = dict(
                    common, rate=load / processes, seed=seed,
                    # Constant arrivals: processes interleave so the combined stream stays evenly spaced.
                    phase_s=proc / load if plan["arrival"] == "constant" else 0.0,
                    max_in_flight=max(1, cap // processes + (1 if proc < cap % processes else 0)) if cap else None,
                )
        return work_by_process

    def _run_level(self, pool, index: int, load, mode: str | None = None) -> dict:
        """Run one level at `load` (in the plan's mode, or in `mode`: a capacity search's synchronous
        level is closed loop whatever the plan's mode) and return it, assembled."""
        plan = self.plan
        mode = mode or plan["mode"]
        self.current_load = load
        # Give every runner time to receive its work, so all of them start at the same instant.
        t0 = time.perf_counter() + (0.05 if pool.processes == 1 else 0.3)
        work_by_process = self._work_by_process(index, load, pool.processes, t0, mode)
        pool.run_level(work_by_process)
        window_start = t0 + plan["warmup_s"]
        window_end = window_start + plan["duration_s"]
        per_level = plan["warmup_s"] + plan["duration_s"]
        partials: dict[int, dict] = {}
        pending: dict[int, dict[int, dict]] = {}
        status, abort_reason = "completed", None
        watch = AbortWatch(plan["abort_error_rate"], plan["abort_window_s"])
        began_telemetry = False
        started_at = None
        last_progress = 0.0
        totals = {"completed": 0, "failed": 0}
        self._progress(level_index=index, phase="warmup" if plan["warmup_s"] else "measure")
        while len(partials) < len(work_by_process):
            message = pool.get(timeout=POLL_S)
            now = time.perf_counter()
            if started_at is None and now >= window_start:
                started_at = utc_now()
            if not began_telemetry and now >= window_start and self.telemetry is not None:
                began_telemetry = True
                self.telemetry.begin_level(index)
            if status == "completed" and self.cancel.cancelled:
                status, abort_reason = "cancelled", "cancelled on request"
                pool.stop()
            if message is None:
                dead = pool.dead()
                if dead:
                    raise SweepError(f"level {index} failed: {dead}")
                if now - last_progress > 1.5:
                    # Nothing reported for a while (a stalled server): keep live views ticking.
                    last_progress = now
                    phase = "warmup" if now < window_start else ("measure" if now < window_end else "drain")
                    self._progress(level_index=index, phase=phase, level_elapsed_s=now - t0, **totals)
                continue
            kind, proc, payload = message
            if kind == "failed":
                pool.stop()
                raise SweepError(f"level {index} failed in load process {proc}: {payload}")
            if kind == "samples":
                if self.samples_sink is not None:
                    self.samples_sink(index, payload)
            elif kind == "done":
                partials[proc] = payload
            elif kind == "second":
                pending.setdefault(payload["sec"], {})[proc] = payload
                for sec in sorted(pending):
                    rows = pending[sec]
                    if len(rows) < len(work_by_process):
                        break
                    del pending[sec]
                    merged = self._merge_second(sec, rows)
                    totals = {"completed": sum(r["window_ok"] for r in rows.values()),
                              "failed": sum(r["window_failed"] for r in rows.values())}
                    last_progress = now
                    second_phase, refused = merged.pop("phase"), merged.pop("refused")
                    self._progress(level_index=index, phase=second_phase, level_elapsed_s=now - t0,
                                   second=merged, **totals)
                    if status == "completed" and second_phase == "measure" \
                            and watch.add(sec, merged["completed"], merged["errors"], refused=refused):
                        status = "aborted"
                        abort_reason = (f"error rate above {plan['abort_error_rate']:.0%} for "
                                        f"{watch.bad_seconds} s in a row")
                        pool.stop()
        if started_at is None:
            started_at = utc_now()
        level = build_level(list(partials.values()), index=index, mode=mode, load=load,
                            warmup_s=plan["warmup_s"], started_at=started_at, status=status,
                            abort_reason=abort_reason, tokens_source=self.token_source, shape=self.shape)
        limit_ms = slo_rule.Slo.from_plan(plan).goodput_limit_ms
        if limit_ms is not None:
            level["goodput"] = slo_rule.goodput(level, limit_ms, plan["timeout_s"])
        self.inputs["corpus_reused"] = sum(p.get("corpus_reused", 0) for p in partials.values())
        if self.telemetry is not None:
            if not began_telemetry:
                self.telemetry.begin_level(index)
            try:
                # The window, not the drain after it: energy and averages cover the time the tokens were counted in.
                extra = self.telemetry.end_level(requests_ok=level["requests_ok"],
                                                 prompt_tokens=round(level["tokens_per_s"] * level["duration_s"]),
                                                 duration_s=level["duration_s"], **self._client_view(level))
            except Exception as exc:  # telemetry never costs a level its figures
                extra = {"telemetry_notes": [f"telemetry failed: {type(exc).__name__}: {exc}"]}
            level.update(extra or {})
            # A server gauge or counter that did not follow the load is something a reader must know.
            level["notes"].extend((level.get("server") or {}).get("cross_checks") or [])
        self._progress(level_index=index, phase="drain", level_elapsed_s=min(per_level, time.perf_counter() - t0),
                       completed=level["requests_ok"], failed=level["requests_failed"])
        return level

    def _client_view(self, level: dict) -> dict:
        """What the client saw in a level, for the server's gauges to be checked against: mean requests
        in flight, the level's p50 and the fastest idle request (calibration, or an earlier level's p50)."""
        seconds = [p["in_flight"] for p in level.get("timeseries") or [] if p.get("in_flight") is not None]
        p50 = (level.get("latency_ms") or {}).get("p50")
        idle = [ms for ms in (*self.idle_latencies_ms, *(lv["latency_ms"]["p50"] for lv in self.levels))
                if ms is not None and ms > 0]
        view = {"client_in_flight": sum(seconds) / len(seconds) if seconds else None, "latency_ms": p50,
                "idle_latency_ms": min(idle) if idle else None}
        return view

    def _merge_second(self, sec: int, rows: dict[int, dict]) -> dict:
        phases = {r["phase"] for r in rows.values()}
        phase = "measure" if "measure" in phases else ("warmup" if "warmup" in phases else "drain")
        merged = merge_second(sec, list(rows.values()))
        refused = merged["completed"] == 0 and any(r.get("unreachable") for r in rows.values())
        return {**merged, "phase": phase, "refused": refused}

    # ---- the sweep -------------------------------------------------------------------------

    def run(self) -> dict:
        from benchmarks.pool import LoadPool

        plan = self.plan
        started_at = utc_now()
        self._progress(level_index=0, phase="probe")
        pool = None
        try:
            if self.telemetry is not None:
                self.telemetry.start()
            if self.cancel.cancelled:
                self.status, self.status_reason = "cancelled", "cancelled before the first level"
            elif self._remaining_cells() or plan["search"] == "capacity":
                levels_per_shape = len(plan["levels"])
                first = self._remaining_cells()[0]["index"] // levels_per_shape if plan["shape_field"] else 0
                self._begin_shape(first)
                config = {
                    "flavor": self.target["flavor"], "model": self.target.get("model", ""),
                    "base_urls": self.target["base_urls"], "api_key": self.target.get("api_key"),
                    "input": plan["input"], "corpus": plan["corpus"], "seed": plan["seed"],
                    "outbound": self.outbound, "tokenizer_path": self.tokenizer_path,
                    **self._shape_config(),
                }
                pool = LoadPool(config, plan["processes"])
                pool.start()
            if plan["search"] == "capacity" and pool is not None:
                from benchmarks.capacity import CapacitySearch

                self.capacity = CapacitySearch(self, pool).run()
            else:
                self._run_levels(pool)
        except SweepError as exc:
            # The caller still gets what finished: the partial document rides on the exception.
            self.status, self.status_reason = "failed", str(exc)
            self._close_telemetry()
            exc.document = self._document(started_at)
            raise
        finally:
            if pool is not None:
                pool.close()
            self._close_telemetry()
        return self._document(started_at)

    def _remaining_cells(self) -> list[dict]:
        """The cells still to measure: every cell of the grid but those a resumed run had finished."""
        return [cell for cell in self.cells if cell["index"] not in self.done_indices]

    def _run_levels(self, pool) -> None:
        """Each cell of the grid in order: each shape (outer), each load level (inner). A level the abort
        policy stops ends its shape (higher load would only fail harder); the next shape still runs."""
        plan = self.plan
        remaining = self._remaining_cells()
        if pool is None:
            if remaining and self.status == "succeeded":
                self.status, self.status_reason = "cancelled", f"cancelled before level {remaining[0]['index']}"
            return
        levels_per_shape = len(plan["levels"])
        aborted_shape = None
        reasons = []
        for cell in remaining:
            index, load, shape = cell["index"], cell["load"], cell["shape"]
            shape_index = index // levels_per_shape if shape is not None else 0
            if aborted_shape is not None and shape_index == aborted_shape:
                continue
            if self.cancel.cancelled:
                if self.status == "succeeded":
                    self.status, self.status_reason = "cancelled", f"cancelled before level {index}"
                break
            if shape_index != self._shape_index:
                self._begin_shape(shape_index)
            level = self._run_level(pool, index, load)
            if level["status"] == "cancelled" and level["duration_s"] <= 0:
                self.status, self.status_reason = "cancelled", f"cancelled during the warm-up of level {index}"
                break
            self.levels.append(level)
            if self.on_level is not None:
                self.on_level(level)
            if level["status"] == "cancelled":
                self.status, self.status_reason = "cancelled", f"cancelled during level {index}"
                break
            if level["status"] == "aborted":
                # Higher load would only fail harder: this shape ends here, its levels stand.
                if self.aborted_at_level is None:
                    self.aborted_at_level = load
                reason = f"stopped after level {index} (load {load}): {level['abort_reason']}"
                if shape is None:
                    reasons.append(reason)
                    break
                aborted_shape = shape_index
                later = any(c["index"] // levels_per_shape > shape_index for c in remaining)
                reasons.append(f"{shape['field']} {shape['value']}: {reason}"
                               + ("; the next shape went on" if later else ""))
        if reasons and self.status == "succeeded":
            self.status_reason = "; ".join(reasons)
        elif reasons:
            self.status_reason = "; ".join([*reasons, self.status_reason])

    def _close_telemetry(self) -> None:
        if self.telemetry is None or self._telemetry_closed:
            return
        self._telemetry_closed = True
        self.telemetry_notes = list(getattr(self.telemetry, "notes", []) or [])
        try:
            self.telemetry.close()
        except Exception:  # closing telemetry must not mask the real outcome
            pass

    def _document(self, started_at: str) -> dict:
        plan = self.plan
        run = {
            "id": None, "uuid": str(uuid.uuid4()), "label": "", "notes": "", "server_config": {},
            "status": self.status, "status_reason": self.status_reason, "aborted_at_level": self.aborted_at_level,
            "started_at": started_at, "finished_at": utc_now(),
        }
        run.update({k: v for k, v in self.run_info.items()
                    if k not in ("status", "status_reason", "aborted_at_level")})
        verdict = judge_run(plan, self.levels, status=self.status, aborted_at_level=self.aborted_at_level,
                            capacity=self.capacity, planned_levels=len(self._remaining_cells()))
        run.update(verdict=verdict["verdict"], verdict_reasons=verdict["reasons"],
                   unreachable_s=verdict["unreachable_s"])
        return {
            "schema": SCHEMA,
            "run": run,
            "target": public_target(self.target),
            "plan": dict(plan),  # as run: defaults filled in
            "probe": self.probe,
            "inputs": self.inputs,
            "client": client_info(plan["processes"]),
            "telemetry_notes": self.telemetry_notes,
            "levels": self.levels,
            "summary": summarize(self.levels, plan["slo_p99_ms"], plan["thresholds"],
                                 shapes=[shape for shape, _ in plan_rule.shape_plans(plan) if shape is not None]),
            **({"capacity": self.capacity} if plan["search"] == "capacity" else {}),
        }


def run_sweep(target: dict, plan: dict, *, cancel: CancelToken | None = None,
              on_progress: Callable[[dict], None] | None = None,
              on_level: Callable[[dict], None] | None = None,
              telemetry=None,
              samples_sink: Callable[[int, list[tuple]], None] | None = None,
              run_info: dict | None = None, outbound: OutboundPolicy | None = None,
              limits: PlanLimits | None = None, tokenizers: TokenizerPolicy | None = None,
              done_indices=None) -> dict:
    """Run a plan against a target and return the full `embperf.run/1` document.

    Synchronous: the load runs in its own thread (one process) or spawned processes, this thread
    controls. Raises `SweepError` for a fatal problem a person can act on (a probe that fails, a
    bad plan value, a load process that dies). Finished levels are always delivered through
    `on_level` before an exception or a cancellation ends the sweep; a cancelled sweep returns
    its document with `run.status` "cancelled" and the levels that finished.
    Every address the sweep contacts passes `outbound` (default: the policy of $EMBPERF_ALLOWED_TARGETS,
    benchmarks/outbound.py); telemetry carries its own (`build_telemetry(outbound=...)`). `limits` are
    the installation's bounds for the plan (benchmarks.plan; the defaults when not given).
    `tokenizers` says which tokenizer files the target may name (benchmarks.tokens.TokenizerPolicy;
    by default any local path, as for the CLI; the portal's workers pass their folder's policy).
    `done_indices`: the indices of levels (cells of a shape axis's grid, benchmarks.plan.plan_cells) that
    a run this one resumes already measured; they are skipped, and every other level keeps its index.
    """
    sweep = Sweep(target, plan, cancel=cancel, on_progress=on_progress, on_level=on_level,
                  telemetry=telemetry, samples_sink=samples_sink, run_info=run_info, outbound=outbound,
                  limits=limits, tokenizers=tokenizers, done_indices=done_indices)
    return sweep.run()
