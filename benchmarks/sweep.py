"""A sweep: probe, calibrate, then run each level of a plan and return the result document.

`run_sweep` is synchronous. The load runs in its own thread or processes (`pool.py`); this
thread is the controller: it merges the per-second reports of the load processes, calls the
progress callback, applies the abort policy, watches the cancel token, drives telemetry and
assembles each level. A finished level is handed to `on_level` before anything else can go wrong.
"""
import logging
import math
import secrets
import time
import uuid
from collections.abc import Callable

from benchmarks.control import CancelToken
from benchmarks.document import (
    SCHEMA,
    build_level,
    client_info,
    merge_second,
    public_plan,
    public_target,
    summarize,
    utc_now,
)
from benchmarks.errors import ConfigError, SweepError
from benchmarks.flavors import ENCODINGS, FLAVORS, make_flavor
from benchmarks.inputs import MODES as INPUT_MODES
from benchmarks.inputs import InputSource, fit_length
from benchmarks.probe import probe_texts

logger = logging.getLogger(__name__)

POLL_S = 0.1  # how often the controller looks at cancel, telemetry and the runners' messages
CHARS_PER_TOKEN_GUESS = 4.0  # starting point of calibration, and the estimate when no usage comes back

PLAN_DEFAULTS = {
    "name": "",
    "mode": "closed",
    "levels": [1],
    "arrival": "poisson",
    "max_in_flight": None,
    "warmup_s": 5.0,
    "duration_s": 120.0,
    "tokens": 512,
    "batch": 1,
    "dimensions": None,
    "encoding": "float",
    "timeout_s": 30.0,
    "abort_error_rate": 0.5,
    "abort_window_s": 10.0,
    "slo_p99_ms": None,
    "input": "unique",
    "corpus": None,
    "processes": 1,
    "keep_samples": False,
    "seed": None,
}


def _number(plan: dict, key: str, *, minimum: float, integer: bool = False, allow_none: bool = False,
            strictly: bool = False):
    value = plan.get(key)
    if value is None and allow_none:
        return None
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"plan {key} must be a number, not {value!r}") from None
    if integer and float(value) != number:
        raise ConfigError(f"plan {key} must be a whole number, not {value!r}")
    if number < minimum or (strictly and number == minimum):
        raise ConfigError(f"plan {key} must be {'above' if strictly else 'at least'} {minimum:g}, not {value!r}")
    return number


def normalize_plan(plan: dict) -> dict:
    """The plan with defaults filled in and every value checked (ConfigError names the bad one)."""
    out = dict(PLAN_DEFAULTS)
    out.update({k: v for k, v in plan.items() if v is not None or k in ("dimensions", "max_in_flight",
                                                                         "slo_p99_ms", "seed", "corpus")})
    if out["mode"] not in ("closed", "open"):
        raise ConfigError(f"plan mode must be 'closed' or 'open', not {out['mode']!r}")
    if out["arrival"] not in ("constant", "poisson"):
        raise ConfigError(f"plan arrival must be 'constant' or 'poisson', not {out['arrival']!r}")
    if out["encoding"] not in ENCODINGS:
        raise ConfigError(f"plan encoding must be 'float' or 'base64', not {out['encoding']!r}")
    if out["input"] not in INPUT_MODES:
        raise ConfigError(f"plan input must be one of {', '.join(INPUT_MODES)}, not {out['input']!r}")
    levels = out["levels"]
    if not isinstance(levels, list | tuple) or not levels:
        raise ConfigError("plan levels must be a non-empty list of numbers")
    checked = []
    for value in levels:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"plan level {value!r} is not a number") from None
        if number <= 0 or not math.isfinite(number):
            raise ConfigError(f"plan level {value!r} must be above 0")
        if out["mode"] == "closed":
            if number != int(number):
                raise ConfigError(f"closed-loop level {value!r} must be a whole number of requests in flight")
            number = int(number)
        checked.append(number)
    out["levels"] = checked
    out["warmup_s"] = _number(out, "warmup_s", minimum=0)
    out["duration_s"] = _number(out, "duration_s", minimum=0, strictly=True)
    out["tokens"] = _number(out, "tokens", minimum=1, integer=True)
    out["batch"] = _number(out, "batch", minimum=1, integer=True)
    out["dimensions"] = _number(out, "dimensions", minimum=1, integer=True, allow_none=True)
    out["max_in_flight"] = _number(out, "max_in_flight", minimum=1, integer=True, allow_none=True)
    out["timeout_s"] = _number(out, "timeout_s", minimum=0, strictly=True)
    out["abort_error_rate"] = _number(out, "abort_error_rate", minimum=0)
    out["abort_window_s"] = _number(out, "abort_window_s", minimum=1)
    out["slo_p99_ms"] = _number(out, "slo_p99_ms", minimum=0, strictly=True, allow_none=True)
    out["processes"] = _number(out, "processes", minimum=1, integer=True)
    out["seed"] = _number(out, "seed", minimum=0, integer=True, allow_none=True)
    out["keep_samples"] = bool(out["keep_samples"])
    if out["input"] == "corpus" and not out["corpus"]:
        raise ConfigError("plan input 'corpus' needs corpus texts")
    return out


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
    if not out.get("model") and out["flavor"] != "tei":
        raise ConfigError("the target needs a model name")
    return out


def check_combination(target: dict, plan: dict) -> None:
    """Raise ConfigError when the plan asks for something the target's flavor cannot do."""
    make_flavor(target["flavor"], target.get("model", ""), dimensions=plan["dimensions"], encoding=plan["encoding"])


class Sweep:
    """One run of a plan against a target (use `run_sweep`)."""

    def __init__(self, target, plan, *, cancel, on_progress, on_level, telemetry, samples_sink, run_info):
        self.target = normalize_target(target)
        self.plan = normalize_plan(plan)
        check_combination(self.target, self.plan)
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
        self.tokens_per_text_estimate = None
        self.chars_per_text = 1
        self.status = "succeeded"
        self.status_reason = ""
        self.aborted_at_level = None  # the load of the level the abort policy stopped the sweep at
        self.telemetry_notes: list[str] = []
        self._telemetry_closed = False

    # ---- progress --------------------------------------------------------------------------

    def _progress(self, **fields) -> None:
        if self.on_progress is None:
            return
        plan = self.plan
        per_level = plan["warmup_s"] + plan["duration_s"]
        index = fields.get("level_index", 0)
        elapsed_in_level = fields.get("level_elapsed_s", 0.0)
        remaining = max(0.0, per_level - elapsed_in_level) + per_level * (len(plan["levels"]) - index - 1)
        progress = {
            "level_index": index,
            "levels_total": len(plan["levels"]),
            "load": plan["levels"][index] if index < len(plan["levels"]) else None,
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
        except Exception:  # noqa: BLE001 - live progress is a view; it must never cost the measurement
            logger.exception("the progress callback failed; the sweep goes on")

    def _latest_telemetry(self):
        if self.telemetry is None:
            return None
        try:
            return self.telemetry.latest()
        except Exception:  # noqa: BLE001 - telemetry never breaks a sweep
            return None

    # ---- probe and calibration -------------------------------------------------------------

    def _send(self, texts: list[str]) -> dict:
        plan = self.plan
        result = probe_texts(self.target, texts, dimensions=plan["dimensions"], encoding=plan["encoding"],
                             timeout_s=min(plan["timeout_s"], 60))
        if not result["ok"]:
            message = result["error"] + (f" (hint: {result['hint']})" if result.get("hint") else "")
            raise SweepError(message)
        return result

    def _probe_and_calibrate(self) -> None:
        plan = self.plan
        sampler = InputSource("unique", salt=self.salt + "c", seed=plan["seed"], stream_index=99)
        guess = max(1, round(plan["tokens"] * CHARS_PER_TOKEN_GUESS))
        first = self._send([sampler.sample_text(guess)])
        self.probe = {k: first[k] for k in ("served_model", "vector_length", "prompt_tokens", "latency_ms")}
        self.dims = plan["dimensions"] or first["vector_length"]
        mode = plan["input"]
        calibration = {"target_tokens": plan["tokens"], "chars_per_text": None, "chars_per_token": None,
                       "measured_tokens": None, "estimated": False}
        self.chars_per_text = guess
        if mode == "corpus":
            texts = plan["corpus"]
            self.tokens_per_text_estimate = sum(len(t) for t in texts) / len(texts) / CHARS_PER_TOKEN_GUESS
            calibration["target_tokens"] = None
        elif first["prompt_tokens"]:
            samples = [(guess, first["prompt_tokens"])]
            short = max(1, guess // 2)
            samples.insert(0, (short, self._send([sampler.sample_text(short)])["prompt_tokens"]))
            chars = fit_length(samples, plan["tokens"])
            text = sampler.sample_text(chars)
            measured = self._send([text])["prompt_tokens"]
            # One refinement step when the straight-line fit missed by more than 2 %.
            if measured and abs(measured - plan["tokens"]) > 0.02 * plan["tokens"]:
                chars = fit_length([samples[0], (chars, measured)], plan["tokens"])
                text = sampler.sample_text(chars)
                measured = self._send([text])["prompt_tokens"]
            self.chars_per_text = chars
            self.tokens_per_text_estimate = measured or plan["tokens"]
            calibration.update(chars_per_text=chars, measured_tokens=measured,
                               chars_per_token=round(len(text) / measured, 3) if measured else None)
        else:
            # The server reports no usage: size texts by a typical ratio and say the tokens are estimated.
            self.tokens_per_text_estimate = plan["tokens"]
            calibration.update(chars_per_text=guess, chars_per_token=CHARS_PER_TOKEN_GUESS, estimated=True)
        self.inputs = {"mode": mode, "cache_study": mode == "repeat", "calibration": calibration,
                       "corpus_reused": 0}

    # ---- levels ----------------------------------------------------------------------------

    def _works(self, index: int, load: float, processes: int, t0: float) -> dict[int, dict]:
        plan = self.plan
        common = {
            "index": index, "mode": plan["mode"], "t0": t0, "warmup_s": plan["warmup_s"],
            "duration_s": plan["duration_s"], "timeout_s": plan["timeout_s"], "dims": self.dims,
            "keep_samples": plan["keep_samples"], "arrival": plan["arrival"],
            "tokens_per_text_estimate": self.tokens_per_text_estimate,
        }
        works = {}
        if plan["mode"] == "closed":
            for proc in range(processes):
                share = load // processes + (1 if proc < load % processes else 0)
                if share:
                    works[proc] = dict(common, concurrency=share)
        else:
            cap = plan["max_in_flight"]
            for proc in range(processes):
                seed = None if plan["seed"] is None else plan["seed"] + 1000 * index + proc
                works[proc] = dict(
                    common, rate=load / processes, seed=seed,
                    # Constant arrivals: processes interleave so the combined stream stays evenly spaced.
                    phase_s=proc / load if plan["arrival"] == "constant" else 0.0,
                    max_in_flight=max(1, cap // processes + (1 if proc < cap % processes else 0)) if cap else None,
                )
        return works

    def _run_level(self, pool, index: int, load) -> dict:
        plan = self.plan
        # Give every runner time to receive its work, so all of them start at the same instant.
        t0 = time.perf_counter() + (0.05 if pool.processes == 1 else 0.3)
        works = self._works(index, load, pool.processes, t0)
        pool.run_level(works)
        t_w = t0 + plan["warmup_s"]
        per_level = plan["warmup_s"] + plan["duration_s"]
        partials: dict[int, dict] = {}
        pending: dict[int, dict[int, dict]] = {}
        status, abort_reason = "completed", None
        bad_seconds = 0
        began_telemetry = False
        started_at = None
        last_progress = 0.0
        totals = {"completed": 0, "failed": 0}
        self._progress(level_index=index, phase="warmup" if plan["warmup_s"] else "measure")
        while len(partials) < len(works):
            message = pool.get(timeout=POLL_S)
            now = time.perf_counter()
            if started_at is None and now >= t_w:
                started_at = utc_now()
            if not began_telemetry and now >= t_w and self.telemetry is not None:
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
                    phase = "warmup" if now < t_w else ("measure" if now < t_w + plan["duration_s"] else "drain")
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
                    if len(rows) < len(works):
                        break
                    del pending[sec]
                    merged = self._merge_second(sec, rows)
                    totals = {"completed": sum(r["window_ok"] for r in rows.values()),
                              "failed": sum(r["window_failed"] for r in rows.values())}
                    last_progress = now
                    self._progress(level_index=index, phase=merged.pop("phase"), level_elapsed_s=now - t0,
                                   second=merged, **totals)
                    if status == "completed" and self._abort_check(merged, sec):
                        bad_seconds += 1
                        if bad_seconds >= plan["abort_window_s"]:
                            status = "aborted"
                            abort_reason = (f"error rate above {plan['abort_error_rate']:.0%} for "
                                            f"{bad_seconds} s in a row")
                            pool.stop()
                    elif merged["completed"] + merged["errors"]:
                        bad_seconds = 0
        if started_at is None:
            started_at = utc_now()
        level = build_level(list(partials.values()), index=index, mode=plan["mode"], load=load,
                            warmup_s=plan["warmup_s"], started_at=started_at, status=status,
                            abort_reason=abort_reason)
        self.inputs["corpus_reused"] = sum(p.get("corpus_reused", 0) for p in partials.values())
        if self.telemetry is not None:
            if not began_telemetry:
                self.telemetry.begin_level(index)
            try:
                # The window, not the drain after it: energy and averages cover the time the tokens were counted in.
                extra = self.telemetry.end_level(requests_ok=level["requests_ok"],
                                                 prompt_tokens=round(level["tokens_per_s"] * level["duration_s"]),
                                                 duration_s=level["duration_s"])
            except Exception as exc:  # noqa: BLE001 - telemetry never costs a level its figures
                extra = {"telemetry_notes": [f"telemetry failed: {type(exc).__name__}: {exc}"]}
            level.update(extra or {})
        self._progress(level_index=index, phase="drain", level_elapsed_s=min(per_level, time.perf_counter() - t0),
                       completed=level["requests_ok"], failed=level["requests_failed"])
        return level

    def _merge_second(self, sec: int, rows: dict[int, dict]) -> dict:
        phases = {r["phase"] for r in rows.values()}
        phase = "measure" if "measure" in phases else ("warmup" if "warmup" in phases else "drain")
        return {**merge_second(sec, list(rows.values())), "phase": phase}

    def _abort_check(self, second: dict, sec: int) -> bool:
        """True when this measured second's error rate is above the abort threshold."""
        total = second["completed"] + second["errors"]
        if sec < 0 or total == 0:
            return False
        return second["errors"] / total > self.plan["abort_error_rate"]

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
            else:
                self._probe_and_calibrate()
                config = {
                    "flavor": self.target["flavor"], "model": self.target.get("model", ""),
                    "dimensions": plan["dimensions"], "encoding": plan["encoding"],
                    "base_urls": self.target["base_urls"], "api_key": self.target.get("api_key"),
                    "input": plan["input"], "batch": plan["batch"], "chars_per_text": self.chars_per_text,
                    "corpus": plan["corpus"], "salt": self.salt, "seed": plan["seed"],
                }
                pool = LoadPool(config, plan["processes"])
                pool.start()
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

    def _run_levels(self, pool) -> None:
        plan = self.plan
        for index, load in enumerate(plan["levels"]):
            if self.cancel.cancelled or pool is None:
                if self.status == "succeeded":
                    self.status, self.status_reason = "cancelled", f"cancelled before level {index}"
                break
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
                # Higher load would only fail harder: the sweep ends here, its levels stand.
                self.aborted_at_level = load
                self.status_reason = f"stopped after level {index} (load {load}): {level['abort_reason']}"
                break

    def _close_telemetry(self) -> None:
        if self.telemetry is None or self._telemetry_closed:
            return
        self._telemetry_closed = True
        self.telemetry_notes = list(getattr(self.telemetry, "notes", []) or [])
        try:
            self.telemetry.close()
        except Exception:  # noqa: BLE001 - closing telemetry must not mask the real outcome
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
        return {
            "schema": SCHEMA,
            "run": run,
            "target": public_target(self.target),
            "plan": public_plan(plan),
            "probe": self.probe,
            "inputs": self.inputs,
            "client": client_info(plan["processes"]),
            "telemetry_notes": self.telemetry_notes,
            "levels": self.levels,
            "summary": summarize(self.levels, plan["slo_p99_ms"]),
        }


def run_sweep(target: dict, plan: dict, *, cancel: CancelToken | None = None,
              on_progress: Callable[[dict], None] | None = None,
              on_level: Callable[[dict], None] | None = None,
              telemetry=None,
              samples_sink: Callable[[int, list[tuple]], None] | None = None,
              run_info: dict | None = None) -> dict:
    """Run a plan against a target and return the full `embperf.run/1` document.

    Synchronous: the load runs in its own thread (one process) or spawned processes, this thread
    controls. Raises `SweepError` for a fatal problem a person can act on (a probe that fails, a
    bad plan value, a load process that dies). Finished levels are always delivered through
    `on_level` before an exception or a cancellation ends the sweep; a cancelled sweep returns
    its document with `run.status` "cancelled" and the levels that finished.
    """
    sweep = Sweep(target, plan, cancel=cancel, on_progress=on_progress, on_level=on_level,
                  telemetry=telemetry, samples_sink=samples_sink, run_info=run_info)
    return sweep.run()
