"""Load processes: where the event loops that generate load live during a sweep.

With one process the load runs in a thread of the calling process (its own event loop), so the
calling thread stays free for progress callbacks, cancellation and telemetry, none of which may
stall the hot loop. With P > 1 the load runs in P spawned processes (one event loop each) that
live for the whole sweep, so their input streams (unique counters, corpus positions) carry on
from level to level. Both speak the same protocol: the controller sends one work dict per level,
the runner answers with ("second" | "samples" | "done" | "failed", proc, payload) messages.

The caller may itself be a daemonic process: a Celery prefork pool child is a daemonic billiard
process, which billiard also installs as multiprocessing's current process. Two things then stand
in the way of spawning, and `_children_allowed` sets both aside while the load processes are made
and started, restoring them after:
- multiprocessing refuses children to a daemonic process. The refusal protects one thing, that
  daemonic children do not outlive their parent; load processes see to that themselves (each
  leaves when its parent is gone, between levels, and levels are bounded in time);
- the authentication key is billiard's own string type, which multiprocessing's spawn refuses to
  pickle; the same key is handed over as multiprocessing's type.
"""
import asyncio
import contextlib
import multiprocessing
import os
import queue
import threading
import time

from benchmarks.errors import SweepError
from benchmarks.flavors import make_flavor, request_headers
from benchmarks.inputs import InputSource
from benchmarks.loadgen import LevelRunner
from benchmarks.tokens import load_tokenizer


def _loop_factory():
    try:
        import uvloop
    except ImportError:  # uvloop is optional (it does not exist on every platform)
        return None
    return uvloop.new_event_loop


PARENT_CHECK_S = 1.0  # how often an idle load process looks whether its parent still lives


@contextlib.contextmanager
def _children_allowed():
    """Let this process make and start child processes also when it is a daemonic pool child
    (see the module docstring)."""
    config = multiprocessing.current_process()._config
    saved = {key: config[key] for key in ("daemon", "authkey") if key in config}
    config["daemon"] = False
    if "authkey" in config:
        config["authkey"] = multiprocessing.process.AuthenticationString(bytes(config["authkey"]))
    try:
        yield
    finally:
        config.pop("daemon", None)
        config.update(saved)


def _next_work(commands, parent_pid: int | None):
    """The next level to run, or None when told to stop or when the parent process is gone."""
    while True:
        try:
            return commands.get(timeout=PARENT_CHECK_S)
        except queue.Empty:
            if parent_pid is not None and os.getppid() != parent_pid:
                return None


# What one shape of a plan's shape axis changes in a load process's requests: a level's work may carry
# these (`shape_config`), and the process rebuilds its flavor and input source when they change.
SHAPE_CONFIG = ("dimensions", "encoding", "batch", "chars_per_text", "salt", "tokens", "lengths")


def _requests(proc: int, config: dict, tokenizer):
    """The flavor, input source and URLs a load process sends its requests with."""
    flavor = make_flavor(config["flavor"], config["model"], dimensions=config.get("dimensions"),
                         encoding=config.get("encoding", "float"))
    inputs = InputSource(
        config["input"], batch=config["batch"], chars_per_text=config["chars_per_text"],
        corpus=config.get("corpus"), salt=config["salt"],
        seed=None if config.get("seed") is None else config["seed"] + 7919 * proc,
        stream_index=proc, stream_count=config["processes"],
        tokenizer=tokenizer, tokens_per_text=config.get("tokens"), lengths=config.get("lengths"),
    )
    return flavor, inputs, [flavor.url(u) for u in config["base_urls"]]


def serve(proc: int, config: dict, commands, out, stop_event, cpu_clock_name: str,
          parent_pid: int | None = None) -> None:
    """Body of one load thread or process: set up once, then run each level it is sent. A level of
    another shape (its work's `shape_config`) gets requests of that shape: the flavor and input source
    are built again from it (its own salt keeps the new input stream's texts unique).

    `parent_pid` (load processes only): the controller's pid; the process leaves when it is gone."""
    try:
        # Each process reads the tokenizer the controller resolved (and fetched) for the sweep.
        tokenizer = load_tokenizer(config["tokenizer_path"]) if config.get("tokenizer_path") else None
        flavor, inputs, urls = _requests(proc, config, tokenizer)
        shape = {key: config.get(key) for key in SHAPE_CONFIG}
        headers = request_headers(config.get("api_key"))
        cpu_clock = getattr(time, cpu_clock_name)
        factory = _loop_factory()
    except Exception as exc:  # reported to the controller, which raises it
        out.put(("failed", proc, f"{type(exc).__name__}: {exc}"))
        return
    out.put(("ready", proc, None))
    while True:
        work = _next_work(commands, parent_pid)
        if work is None:
            return
        try:
            wanted = work.get("shape_config")
            if wanted is not None and wanted != shape:
                flavor, inputs, urls = _requests(proc, {**config, **wanted}, tokenizer)
                shape = dict(wanted)
            runner = LevelRunner(work, proc=proc, flavor=flavor, urls=urls, headers=headers, inputs=inputs,
                                 out=out, stop_event=stop_event, cpu_clock=cpu_clock,
                                 outbound=config.get("outbound"))
            with asyncio.Runner(loop_factory=factory) as loop_runner:
                partial = loop_runner.run(runner.run())
            partial["corpus_reused"] = inputs.corpus_reused
            out.put(("done", proc, partial))
        except Exception as exc:  # reported to the controller, which raises it
            out.put(("failed", proc, f"{type(exc).__name__}: {exc}"))


class LoadPool:
    """The P runners of a sweep (a thread when P = 1, spawned processes otherwise)."""

    def __init__(self, config: dict, processes: int) -> None:
        self.processes = processes
        self.config = dict(config, processes=processes)
        self._workers = []
        self._started = []
        self._commands = []
        if processes == 1:
            self.out = queue.Queue()
            self.stop_event = threading.Event()
            commands = queue.Queue()
            worker = threading.Thread(target=serve, name="embperf-load", daemon=True,
                                      args=(0, self.config, commands, self.out, self.stop_event, "thread_time"))
            self._commands.append(commands)
            self._workers.append(worker)
        else:
            # spawn, not fork: the caller may be a threaded Celery worker, and forking threads is unsafe.
            ctx = multiprocessing.get_context("spawn")
            self.out = ctx.Queue()
            self.stop_event = ctx.Event()
            with _children_allowed():  # each Process copies the current process's settings when made
                for proc in range(processes):
                    commands = ctx.Queue()
                    worker = ctx.Process(target=serve, name=f"embperf-load-{proc}", daemon=True,
                                         args=(proc, self.config, commands, self.out, self.stop_event,
                                               "process_time", os.getpid()))
                    self._commands.append(commands)
                    self._workers.append(worker)

    def start(self, timeout_s: float = 60.0) -> None:
        """Start every runner and wait until each has set up (SweepError names why one could not)."""
        with _children_allowed():
            for proc, worker in enumerate(self._workers):
                try:
                    worker.start()
                except Exception as exc:
                    raise SweepError(f"could not start load process {proc}: {type(exc).__name__}: {exc}") from exc
                self._started.append(worker)
        ready = 0
        deadline = time.monotonic() + timeout_s
        while ready < self.processes:
            message = self.get(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
            if message is None:
                if time.monotonic() > deadline or self.dead():
                    raise SweepError("the load processes did not start: " + (self.dead() or "timed out"))
                continue
            kind, proc, payload = message
            if kind == "failed":
                raise SweepError(f"load process {proc} could not start: {payload}")
            if kind == "ready":
                ready += 1

    def run_level(self, work_by_process: dict[int, dict]) -> None:
        """Hand each runner its share of the next level (runners without a share sit it out)."""
        self.stop_event.clear()
        for proc, work in work_by_process.items():
            self._commands[proc].put(work)

    def get(self, timeout: float):
        """The next message from any runner, or None after `timeout` seconds."""
        try:
            return self.out.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self) -> None:
        """Tell every runner to end its level now (cancel or abort)."""
        self.stop_event.set()

    def dead(self) -> str | None:
        """A description of a runner that died, if one did."""
        for proc, worker in enumerate(self._started):
            if not worker.is_alive():
                code = getattr(worker, "exitcode", None)
                return f"load process {proc} exited" + (f" with code {code}" if code is not None else "")
        return None

    def close(self) -> None:
        """Stop the runners and wait for them (briefly; stragglers are terminated)."""
        self.stop_event.set()
        for commands in self._commands:
            commands.put(None)
        for worker in self._started:  # one that never started has nothing to wait for
            worker.join(timeout=5)
            if worker.is_alive() and hasattr(worker, "terminate"):
                worker.terminate()
                worker.join(timeout=2)
        if hasattr(self.out, "close"):
            self.out.close()
