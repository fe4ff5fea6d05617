"""The hot loop: one event loop that applies one level's load and records every request.

A `LevelRunner` drives one process's share of a level (its concurrency, or its share of the
arrival rate) through one aiohttp session with one keep-alive connection pool, validates every
answer, and files each request into HDR histograms and counters. Once a second it reports the
finished second to the controller (`sweep.py`) through `out.put(...)`; at the end it returns a
*partial*: a plain picklable dict that `document.merge_partials` combines exactly with the
partials of the other processes.

Clock: `time.perf_counter()` throughout (CLOCK_MONOTONIC on Linux, shared by all processes of a
host, so the controller can hand every process the same start instant).

Timing rules (docs/result-schema.md, "In-flight rule"):
- the measured window is [window_start, window_end): it starts after the level's warm-up and lasts
  its duration;
- a request belongs to the window when its intended start (closed loop: actual start) lies in it;
  latency (from the intended start) and service time (from the actual start) are recorded for
  those requests that succeeded or timed out, so a stall can never hide behind a timeout;
- throughput counts successful requests that complete inside the window.

Refused connections (nobody listening, host unreachable): a closed-loop slot whose request could
not even connect waits a short, growing pause (BACKOFF_FIRST_S, doubling up to BACKOFF_MAX_S)
before its next try, so an outage costs a few attempts per slot rather than as many as the client
can make, and the error rate measures the outage, not the client's retry speed. The time the
target refused connections inside the window is reported as `unreachable_s`.
"""
import asyncio
import math
import os
import random
import time

import aiohttp

from benchmarks import stats
from benchmarks.answers import (
    ANSWER_SLACK,
    BYTES_PER_VALUE,
    BYTES_PER_VECTOR,
    MAX_VECTOR_LENGTH,
    AnswerTooLarge,
    check_encoding,
    failure,
    mib,
    read_body,
    redirect_text,
)
from benchmarks.errors import (
    ERROR_CLASSES,
    INVALID_RESPONSE,
    OK,
    OUTCOMES,
    TIMEOUT,
    InvalidResponse,
    classify_status,
)
from benchmarks.flavors import error_text
from benchmarks.outbound import OutboundPolicy, OutboundRefused
from benchmarks.outbound import connector as outbound_connector
from benchmarks.tokens import ESTIMATE, TOKENIZER, USAGE

STALL_MIN_S = 1.0  # no answer for this long while requests are in flight is a stall
LATE_THRESHOLD_S = 0.001  # an open-loop request starting later than this after its intended time is "late"
LAG_PROBE_INTERVAL_S = 0.05  # event-loop lag probe period
STOP_POLL_EVERY = 4  # lag probes between two looks at the stop event (about every 0.2 s)
YIELD_EVERY = 16  # open loop: arrivals issued back to back before letting responses in
BACKOFF_FIRST_S = 0.01  # closed loop: first pause after a request that could not connect
BACKOFF_MAX_S = 1.0  # ... doubling up to this


def run_queue_wait_s() -> float | None:
    """Seconds the calling thread has spent runnable but waiting for a CPU (Linux schedstat), or None."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def host_cpu_times() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole host, all cores, or None where unreadable."""
    try:
        import psutil

        times = psutil.cpu_times()
    except Exception:  # host figures are context, never a reason to fail
        return None
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


class Second:
    """What completed during one second of a level (counted by completion time)."""

    __slots__ = ("ok", "errors", "hist", "in_flight")

    def __init__(self) -> None:
        self.ok = 0
        self.errors = 0
        self.hist = stats.new_histogram()
        self.in_flight = 0


class LevelRunner:
    """Runs one process's share of one level. Build it, then `asyncio.run(runner.run())`.

    `work` (one dict, picklable) carries the level: `index`, `mode` (closed/open), `concurrency`
    (this process's slots) or `rate` (this process's arrivals/s) with `phase_s` (offset of its
    first arrival), `arrival`, `max_in_flight`, `t0` (perf_counter instant the level starts),
    `warmup_s`, `duration_s`, `timeout_s`, `dims` (expected vector length), `keep_samples`,
    `seed`, `tokens_per_text_estimate`. `outbound` is the outbound policy every connection passes.
    """

    def __init__(self, work: dict, *, proc: int, flavor, urls: list[str], headers: dict, inputs,
                 out, stop_event, cpu_clock=time.thread_time, outbound: OutboundPolicy | None = None) -> None:
        self.work = work
        # Every connection goes through the outbound policy (benchmarks/outbound.py).
        self.outbound = outbound if outbound is not None else OutboundPolicy.from_environment()
        self.proc = proc
        self.flavor = flavor
        # The probe found the server's full-length vectors to be unit vectors: truncated ones must be too.
        if flavor is not None:
            flavor.unit_norm = bool(work.get("unit_norm"))
        self.urls = urls
        self.headers = headers
        self.inputs = inputs
        self.out = out
        self.stop_event = stop_event
        self.cpu_clock = cpu_clock

        self.t0 = work["t0"]
        self.window_start = self.t0 + work["warmup_s"]
        self.window_end = self.window_start + work["duration_s"]
        self.window_seconds = math.ceil(work["duration_s"])
        self.timeout_s = work["timeout_s"]
        self.dims = work["dims"]
        self.keep_samples = bool(work.get("keep_samples"))
        self.est_tokens = float(work.get("tokens_per_text_estimate") or 0)
        # Memory cap per answer: answers.answer_limit, inlined as one multiply-add per request. The
        # expected length comes from the plan or the probe, never above the installation's maximum.
        most = int(work.get("max_vector_length") or MAX_VECTOR_LENGTH)
        self.bytes_per_text = min(self.dims or most, most) * BYTES_PER_VALUE + BYTES_PER_VECTOR
        self.answer_slack = ANSWER_SLACK

        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.latency = stats.new_histogram()
        self.service = stats.new_histogram()
        self.schedule = stats.new_histogram()
        self.loop_lag = stats.new_histogram()
        self.late = 0
        self.started = 0
        self.in_flight = 0
        self.window_ok = 0
        self.window_texts = 0
        self.window_tokens = 0
        self.tokens_missing = 0
        self.token_source = work.get("token_source") or USAGE
        self.window_usage = 0  # the server's usage, for requests the tokenizer counted too
        self.window_counted = 0  # the tokenizer's count of the same requests
        self.tokens_per_text_sum = 0.0  # tokens per text, over window requests that reported tokens
        self.tokens_per_text_count = 0
        self.tokens_per_text_min = None
        self.tokens_per_text_max = None
        # A length distribution's texts: each window text's token count (the tokenizer's with one, else
        # its drawn target); None for a fixed length, whose documents carry no such section.
        self.input_tokens = stats.new_count_histogram() if getattr(inputs, "lengths", None) is not None else None
        self.input_tokens_source = TOKENIZER if getattr(inputs, "tokenizer", None) is not None else "target"
        # Successful window answers: their bytes, and the client's CPU time to decode and check them.
        self.answers_n = 0
        self.answer_bytes = 0
        self.decode_s = 0.0
        self.seconds: dict[int, Second] = {}
        self.examples: dict[str, str] = {}
        self.samples: list[tuple] = []
        self.next_url = 0  # the base URLs take turns (round robin)
        self.stop_reason = None  # "cancelled" or "aborted" when told to stop early
        self.window_closed_at = None
        self.cpu_window_start = None
        self.cpu_window = None
        self.unreachable_s = 0.0
        self._unreachable_since = None  # when the current run of refused connections began
        self.host_window_start = None
        self.host_window = None  # (run-queue wait s, host busy CPU s, host total CPU s, load average)
        self.last_answer = work["t0"]  # when the last answer arrived (stall detection)
        self.stalls: list[tuple[float, float]] = []  # (start from window start, length) of answerless spans
        self._issuing = True
        self._finished = False
        self._tasks: set[asyncio.Task] = set()

    # ---- one request -------------------------------------------------------------------------

    async def _request(self, intended: float | None) -> bool:
        """Send one request and record it; True when it could not even connect (refused, unreachable)."""
        texts = self.inputs.next_texts()
        counted = self.inputs.last_tokens
        lengths = self.inputs.last_lengths if self.input_tokens is not None else None
        n_texts = len(texts)
        body = self.flavor.body(texts)
        url = self.urls[self.next_url % len(self.urls)]
        self.next_url += 1
        self.in_flight += 1
        start = time.perf_counter()
        if intended is None:
            intended = start
        status = None
        tokens = None
        decode_s = 0.0
        raw = b""
        outcome = None
        connect_failed = False
        limit = n_texts * self.bytes_per_text + self.answer_slack
        try:
            async with self.session.post(url, data=body, allow_redirects=False) as resp:
                status = resp.status
                length = resp.content_length
                if length is not None and length <= limit:
                    raw = await resp.read()  # the common case: announced and within the cap
                else:
                    raw = await read_body(resp, limit)
                end = time.perf_counter()
                headers = resp.headers
        except AnswerTooLarge as exc:
            end = time.perf_counter()
            if 200 <= status < 300:
                outcome = INVALID_RESPONSE
                self._example(outcome, f"{exc} ({n_texts} vectors of {self.dims} values)")
            else:
                # An error status stays in its class; only its oversized text is dropped.
                outcome = classify_status(status)
                self._example(outcome, f"HTTP {status}, with an error text larger than {mib(exc.limit)}")
        except (TimeoutError, aiohttp.ClientError, OSError, OutboundRefused) as exc:
            end = time.perf_counter()
            connect_failed = isinstance(exc, aiohttp.ClientConnectorError)
            outcome, message = failure(exc, self.timeout_s)
            if outcome not in self.examples:
                self._example(outcome, message)
        finally:
            self.in_flight -= 1
        if outcome is None:
            # Answers arrive in bursts (a server batch finishing): let every answer of the burst take
            # its end time before any is checked, so checking one never delays another's clock.
            await asyncio.sleep(0)
            if 200 <= status < 300:
                try:
                    if "Content-Encoding" in headers:
                        check_encoding(headers)
                    check_start = time.thread_time()
                    tokens = self.flavor.validate(raw, n_texts, self.dims, headers)
                    decode_s = time.thread_time() - check_start
                    outcome = OK
                except InvalidResponse as exc:
                    outcome = INVALID_RESPONSE
                    self._example(outcome, str(exc))
                except Exception as exc:  # a hostile answer must never end the load slot
                    outcome = INVALID_RESPONSE
                    self._example(outcome, f"the answer could not be checked ({type(exc).__name__}: {exc})")
            else:
                outcome = classify_status(status)
                if outcome not in self.examples:
                    if 300 <= status < 400:
                        self._example(outcome, redirect_text(status, headers, url))
                    else:
                        self._example(outcome, f"HTTP {status}: {error_text(raw, headers.get('Content-Type'))}")
        nbytes = len(raw)
        self._record(intended, start, end, outcome, status, tokens, n_texts, nbytes, counted, decode_s, lengths)
        self._note_reachable(not connect_failed, start)
        return connect_failed

    def _note_reachable(self, reachable: bool, at: float) -> None:
        # An outage runs from the first attempt that could not connect to the next one that could.
        if not reachable:
            if self._unreachable_since is None:
                self._unreachable_since = at
        elif self._unreachable_since is not None:
            self.unreachable_s += self._window_overlap(self._unreachable_since, at)
            self._unreachable_since = None

    def _window_overlap(self, begin: float, end: float) -> float:
        return max(0.0, min(end, self.window_end) - max(begin, self.window_start))

    def _example(self, outcome: str, message: str) -> None:
        self.examples.setdefault(outcome, message[:300])

    def _record(self, intended, start, end, outcome, status, tokens, n_texts, nbytes, counted=None,
                decode_s=0.0, lengths=None) -> None:
        window_start = self.window_start
        ok = outcome == OK
        usage = tokens
        if ok:
            # The figures take the level's token source (tokens.py); the server's usage is kept beside
            # the tokenizer's count so that the two can be compared.
            if self.token_source == TOKENIZER and counted is not None:
                tokens = counted
            elif self.token_source == ESTIMATE:
                tokens = round(n_texts * self.est_tokens) if lengths is None else sum(lengths)
            elif tokens is None:
                self.tokens_missing += 1
                tokens = round(n_texts * self.est_tokens) if lengths is None else sum(lengths)
        if window_start <= intended < self.window_end:
            self.counts[outcome] += 1
            if lengths is not None:
                # Every text sent in the window, whatever its answer: the distribution the server was given.
                for n in lengths:
                    stats.record_count(self.input_tokens, n)
            if ok or outcome == TIMEOUT:
                stats.record_seconds(self.latency, end - intended)
                stats.record_seconds(self.service, end - start)
            if ok:
                self.answers_n += 1
                self.answer_bytes += nbytes
                self.decode_s += decode_s
            if ok and tokens:
                per_text = tokens / n_texts
                self.tokens_per_text_sum += per_text
                self.tokens_per_text_count += 1
                if self.tokens_per_text_min is None or per_text < self.tokens_per_text_min:
                    self.tokens_per_text_min = per_text
                if self.tokens_per_text_max is None or per_text > self.tokens_per_text_max:
                    self.tokens_per_text_max = per_text
            if self.keep_samples:
                self.samples.append((round(intended - window_start, 6), round(start - window_start, 6),
                                     round(end - window_start, 6), outcome, status, tokens, n_texts, nbytes))
        # Per-second series and throughput go by completion time; completions after the window
        # (the drain) get seconds of their own, so the window's last, partial second stays exact.
        if end < self.window_end:
            sec = math.floor(end - window_start)
        else:
            sec = self.window_seconds + math.floor(end - self.window_end)
        bucket = self.seconds.get(sec)
        if bucket is None:
            bucket = self.seconds[sec] = Second()
        if outcome != TIMEOUT:
            # Any answer, error or not, shows the server alive; a long silence before it was a stall.
            if end - self.last_answer >= STALL_MIN_S:
                # Only the part of the silence this request was waiting through: requests were in flight.
                self._note_stall(max(self.last_answer, start), end)
            self.last_answer = end
        if ok:
            bucket.ok += 1
            stats.record_seconds(bucket.hist, end - intended)
            if window_start <= end < self.window_end:
                self.window_ok += 1
                self.window_texts += n_texts
                self.window_tokens += tokens or 0
                if usage is not None and counted is not None:
                    self.window_usage += usage
                    self.window_counted += counted
        else:
            bucket.errors += 1

    def _note_stall(self, begin: float, end: float) -> None:
        begin, end = max(begin, self.window_start), min(end, self.window_end)
        if end - begin >= STALL_MIN_S:
            self.stalls.append((round(begin - self.window_start, 3), round(end - begin, 3)))

    # ---- load patterns -----------------------------------------------------------------------

    async def _open_schedule(self) -> None:
        work = self.work
        rate = float(work["rate"])
        poisson = work.get("arrival", "poisson") == "poisson"
        rng = random.Random(work.get("seed"))
        cap = work.get("max_in_flight")
        slots = asyncio.Semaphore(cap) if cap else None
        perf = time.perf_counter
        intended = self.t0 + float(work.get("phase_s") or 0.0)
        back_to_back = 0
        deadline = self.window_end + self.timeout_s
        while intended < self.window_end and self._issuing:
            delay = intended - perf()
            if delay > 0:
                back_to_back = 0
                await asyncio.sleep(delay)
            else:
                back_to_back += 1
                if back_to_back >= YIELD_EVERY:
                    back_to_back = 0
                    await asyncio.sleep(0)
            if slots is not None:
                try:
                    await asyncio.wait_for(slots.acquire(), max(0.0, deadline - perf()))
                except TimeoutError:
                    break
            now = perf()
            if intended >= self.window_start:
                self.started += 1
                lag = now - intended
                stats.record_seconds(self.schedule, lag if lag > 0 else 0)
                if lag > LATE_THRESHOLD_S:
                    self.late += 1
            self._spawn(self._request(intended), slots)
            intended += rng.expovariate(rate) if poisson else 1.0 / rate
        # Arrivals due inside the window that could not even start before the deadline (the
        # in-flight cap held them back): they count as timeouts, latency as long as they waited.
        while intended < self.window_end and self._issuing and self.stop_reason is None:
            if intended >= self.window_start:
                self.started += 1
                self.counts[TIMEOUT] += 1
                stats.record_seconds(self.latency, max(deadline - intended, 0))
                self._example(TIMEOUT, f"could not start within {self.timeout_s:g} s (in-flight cap reached)")
            intended += rng.expovariate(rate) if poisson else 1.0 / rate

    def _spawn(self, coro, slots) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        if slots is None:
            task.add_done_callback(self._tasks.discard)
        else:
            def done(t, slots=slots):
                self._tasks.discard(t)
                slots.release()
            task.add_done_callback(done)

    # ---- housekeeping ------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Loop-lag probe and stop polling, until the level is over."""
        perf = time.perf_counter
        polls = 0
        while not self._finished:
            before = perf()
            await asyncio.sleep(LAG_PROBE_INTERVAL_S)
            now = perf()
            if self.window_start <= now < self.window_end:
                stats.record_seconds(self.loop_lag, max(0.0, now - before - LAG_PROBE_INTERVAL_S))
            polls += 1
            if polls >= STOP_POLL_EVERY:
                polls = 0
                if self.stop_event.is_set() and self.stop_reason is None:
                    self._stop_early(now)

    def _schedule_ticks(self) -> None:
        # Timers on the loop's own clock: window start, window end and every second boundary.
        loop = asyncio.get_running_loop()
        offset = loop.time() - time.perf_counter()
        loop.call_at(self.window_start + offset, self._open_window)
        self._close_handle = loop.call_at(self.window_end + offset, self._on_window_end)
        self._next_tick = self.window_start + math.floor(time.perf_counter() - self.window_start) + 1
        self._tick_offset = offset
        self._tick_handle = loop.call_at(self._next_tick + offset, self._on_tick)

    def _open_window(self) -> None:
        self.cpu_window_start = (self.cpu_clock(), time.perf_counter())
        self.host_window_start = (run_queue_wait_s(), host_cpu_times())

    def _on_window_end(self) -> None:
        if self.window_closed_at is None:
            self._close_window(time.perf_counter())

    def _on_tick(self) -> None:
        now = time.perf_counter()
        while now >= self._next_tick - 1e-4:
            self._report_second(self._next_tick)
            self._next_tick += 1
        if not self._finished:
            loop = asyncio.get_running_loop()
            self._tick_handle = loop.call_at(self._next_tick + self._tick_offset, self._on_tick)

    def _close_window(self, now: float) -> None:
        self.window_closed_at = min(now, self.window_end)
        if self.cpu_window_start is not None:
            cpu0, wall0 = self.cpu_window_start
            self.cpu_window = (self.cpu_clock() - cpu0, now - wall0)
        if self.host_window_start is not None:
            wait0, host0 = self.host_window_start
            wait1, host1 = run_queue_wait_s(), host_cpu_times()
            try:
                load = os.getloadavg()[0]
            except OSError:
                load = None
            self.host_window = (
                wait1 - wait0 if wait0 is not None and wait1 is not None else None,
                host1[0] - host0[0] if host0 and host1 else None,
                host1[1] - host0[1] if host0 and host1 else None,
                load,
            )
        if self.in_flight and self.window_closed_at - self.last_answer >= STALL_MIN_S:
            # Still silent when the window closed: the stall runs to the window's end (and is not
            # noted again when the answer that ends it arrives in the drain).
            self._note_stall(self.last_answer, self.window_closed_at)
            self.last_answer = self.window_closed_at
        self._in_flight_at_close = self.in_flight

    def _stop_early(self, now: float) -> None:
        # The controller knows why (cancel or abort policy) and labels the level itself.
        self.stop_reason = "stopped"
        self._issuing = False
        if self.window_closed_at is None:
            if now > self.window_start:
                self._close_window(now)
                self.window_end = now
            else:
                self.window_closed_at = self.window_start
                self.window_end = self.window_start
                self._in_flight_at_close = self.in_flight
        for task in list(self._tasks):
            task.cancel()

    def _report_second(self, tick: float) -> None:
        sec = round(tick - self.window_start) - 1
        bucket = self.seconds.get(sec)
        if bucket is None:
            bucket = self.seconds[sec] = Second()
        bucket.in_flight = self.in_flight
        if sec < 0:
            phase = "warmup"
        elif tick <= self.window_end + 1e-9 or self.window_closed_at is None:
            phase = "measure"
        else:
            phase = "drain"
        self.out.put(("second", self.proc, {
            "sec": sec,
            "phase": phase,
            "completed": bucket.ok,
            "errors": bucket.errors,
            "hist": stats.encode(bucket.hist) if bucket.ok else None,
            "in_flight": self.in_flight,
            "window_ok": self.counts[OK],
            "window_failed": sum(self.counts[c] for c in ERROR_CLASSES),
            # Still refused at the tick: the abort policy takes such a second as bad however few
            # attempts the back-off allowed in it.
            "unreachable": self._unreachable_since is not None,
        }))
        if self.samples:
            batch, self.samples = self.samples, []
            self.out.put(("samples", self.proc, batch))

    # ---- the level ---------------------------------------------------------------------------

    async def run(self) -> dict:
        """Apply the load, wait for the window's requests (in-flight rule), return the partial."""
        work = self.work
        closed = work["mode"] == "closed"
        if closed:
            limit = int(work["concurrency"])
        else:
            limit = int(work.get("max_in_flight") or 0)  # 0: no cap on connections
        connector = outbound_connector(self.outbound, limit=limit, limit_per_host=0, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=self.headers,
            skip_auto_headers=("User-Agent",), auto_decompress=False, raise_for_status=False,
        )
        self._in_flight_at_close = 0
        watcher = asyncio.ensure_future(self._watch())
        self._schedule_ticks()
        try:
            delay = self.t0 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if closed:
                slots = [asyncio.ensure_future(self._counted_slot()) for _ in range(limit)]
                for task in slots:
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                await self._wait_all(slots)
            else:
                schedule = asyncio.ensure_future(self._open_schedule())
                await self._wait_all([schedule])
                await self._wait_all(list(self._tasks))
        finally:
            now = time.perf_counter()
            if self.window_closed_at is None:
                self._close_window(now)
            self._finished = True
            self._tick_handle.cancel()
            self._close_handle.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            # Report the last, partial second so live views see the end of the level.
            if now > self._next_tick - 1:
                self._report_second(self._next_tick)
            await self.session.close()
        return self._partial()

    async def _counted_slot(self) -> None:
        # Closed loop: count window starts here so `requests_started` means the same in both modes.
        request = self._request
        perf = time.perf_counter
        pause = 0.0
        while self._issuing:
            now = perf()
            if now >= self.window_end:
                break
            if now >= self.window_start:
                self.started += 1
            if await request(None):
                pause = min(BACKOFF_MAX_S, pause * 2 if pause else BACKOFF_FIRST_S)
                await asyncio.sleep(min(pause, max(0.0, self.window_end - perf())))
            else:
                pause = 0.0

    async def _wait_all(self, tasks: list) -> None:
        # In-flight rule: window requests finish on their own within timeout_s of their start
        # (the session's timeout); the extra second only guards against a stuck transport.
        if not tasks:
            return
        while True:
            remaining = self.window_end + self.timeout_s + 1.0 - time.perf_counter()
            done, pending = await asyncio.wait(tasks, timeout=max(0.05, min(remaining, 0.25)))
            if not pending:
                return
            tasks = list(pending)
            if remaining <= 0 or self.stop_reason is not None:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                return

    def _partial(self) -> dict:
        t_end = self.window_closed_at if self.window_closed_at is not None else self.window_end
        duration = max(0.0, min(t_end, self.window_end) - self.window_start)
        n_seconds = math.ceil(duration - 1e-9) if duration > 0 else 0
        seconds = {}
        for sec in range(n_seconds):
            bucket = self.seconds.get(sec) or Second()
            seconds[sec] = {
                "completed": bucket.ok,
                "errors": bucket.errors,
                "hist": stats.encode(bucket.hist) if bucket.ok else None,
                "in_flight": bucket.in_flight,
            }
        cpu_s, wall_s = self.cpu_window if self.cpu_window else (0.0, 0.0)
        unreachable = self.unreachable_s
        if self._unreachable_since is not None:  # still refused when the level ended
            unreachable += max(0.0, min(t_end, self.window_end) - max(self._unreachable_since, self.window_start))
        run_wait_s, host_busy_s, host_total_s, load_average = self.host_window or (None, None, None, None)
        return {
            "proc": self.proc,
            "status": self.stop_reason or "completed",
            "duration_s": duration,
            "counts": dict(self.counts),
            "started": self.started,
            "in_flight_at_end": self._in_flight_at_close,
            "window_ok": self.window_ok,
            "window_texts": self.window_texts,
            "window_tokens": self.window_tokens,
            "tokens_missing": self.tokens_missing,
            "window_usage": self.window_usage,
            "window_counted": self.window_counted,
            "tokens_per_text": {"sum": self.tokens_per_text_sum, "n": self.tokens_per_text_count,
                                "min": self.tokens_per_text_min, "max": self.tokens_per_text_max},
            "answers": {"n": self.answers_n, "bytes": self.answer_bytes, "decode_s": self.decode_s},
            "input_tokens": None if self.input_tokens is None else {
                "hist": stats.encode(self.input_tokens), "source": self.input_tokens_source},
            "latency": stats.encode(self.latency),
            "service": stats.encode(self.service),
            "schedule": stats.encode(self.schedule) if self.work["mode"] == "open" else None,
            "late": self.late,
            "loop_lag": stats.encode(self.loop_lag),
            "cpu_s": cpu_s,
            "wall_s": wall_s,
            "unreachable_s": unreachable,
            "run_wait_s": run_wait_s,
            "host_busy_s": host_busy_s,
            "host_total_s": host_total_s,
            "load_average": load_average,
            "host_cpus": os.cpu_count(),
            "stalls": list(self.stalls),
            "seconds": seconds,
            "examples": dict(self.examples),
            "samples": self.samples,
        }
