"""Per-request raw samples: written compressed beside the main tables, read back as streamed CSV.

A plan with `keep_samples` makes the engine hand batches of raw-sample tuples to a sink
(`benchmarks.sweep.run_sweep(samples_sink=...)`, called with `(level_index, batch)`). The worker passes
`writer_for_run(run)` (workers/tasks.py).
Each batch is formatted once into final CSV lines, compressed with zlib and stored as one
or more `RawSampleChunk` rows, so the export only decompresses and streams: memory stays
flat whatever the number of requests.
"""
import asyncio
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from django.db import close_old_connections, connection, transaction

from benchmarks.plan import plan_cells
from portal.sweeps.models import RawSampleChunk

# Columns of the raw-sample CSV, in order. Documented in docs/api.md; names are stable.
SAMPLE_COLUMNS = (
    "level_index",
    "load",
    "intended_start_s",
    "actual_start_s",
    "end_s",
    "latency_ms",
    "service_ms",
    "outcome",
    "http_status",
    "tokens",
    "texts",
    "response_bytes",
)
CSV_HEADER = (",".join(SAMPLE_COLUMNS) + "\r\n").encode()
# Samples per stored chunk: about 1.5 MB of CSV before compression.
CHUNK_SAMPLES = 20_000
ZLIB_LEVEL = 6
# Chunks fetched per database round trip while streaming.
READ_BATCH = 4

_db_thread: ThreadPoolExecutor | None = None


def _num(value, digits: int) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}"


def _int(value) -> str:
    return "" if value is None else str(int(value))


def format_sample(level_index: int, load, sample: Sequence) -> str:
    """One CSV line for one raw-sample tuple (intended, actual, end, outcome, status, tokens, texts, bytes)."""
    intended, actual, end, outcome, http_status, tokens, texts, response_bytes = sample
    latency = (end - intended) * 1000 if end is not None and intended is not None else None
    service = (end - actual) * 1000 if end is not None and actual is not None else None
    return ",".join(
        (
            str(level_index),
            "" if load is None else f"{load:g}",
            _num(intended, 6),
            _num(actual, 6),
            _num(end, 6),
            _num(latency, 3),
            _num(service, 3),
            str(outcome or ""),
            _int(http_status),
            _int(tokens),
            _int(texts),
            _int(response_bytes),
        )
    )


def _insert(rows: list[RawSampleChunk]) -> None:
    with transaction.atomic():
        RawSampleChunk.objects.bulk_create(rows)


def _insert_off_loop(rows: list[RawSampleChunk]) -> None:
    # Django refuses database work in a thread that runs an event loop; the engine may call the
    # sink from there, so the insert goes to one dedicated thread and this call waits for it.
    global _db_thread
    if _db_thread is None:
        _db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embperf-samples")

    def work():
        close_old_connections()
        try:
            _insert(rows)
        finally:
            connection.close()

    _db_thread.submit(work).result()


def store_samples(run_id: int, level_index: int, samples: Sequence[Sequence], *, load=None) -> int:
    """Store one batch of raw samples of one level of a run; returns how many were stored.

    `load` is the level's concurrency or rate, repeated on every line so the CSV stands alone.
    Safe to call from any thread, including one running an asyncio loop.
    """
    rows = []
    for start in range(0, len(samples), CHUNK_SAMPLES):
        part = samples[start : start + CHUNK_SAMPLES]
        text = "".join(format_sample(level_index, load, s) + "\r\n" for s in part)
        rows.append(
            RawSampleChunk(
                run_id=run_id,
                level_index=level_index,
                count=len(part),
                data=zlib.compress(text.encode(), ZLIB_LEVEL),
            )
        )
    if not rows:
        return 0
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        _insert(rows)
    else:
        _insert_off_loop(rows)
    return len(samples)


def writer_for_run(run) -> Callable[[int, list[tuple]], None]:
    """The `samples_sink` to hand the engine for this run: `sink(level_index, batch)`."""
    # Level i of the run is cell i of its plan's grid (one cell per level without a shape axis).
    loads = [cell["load"] for cell in plan_cells(run.plan_config or {})]
    run_id = run.pk

    def sink(level_index: int, batch: list[tuple]) -> None:
        load = loads[level_index] if 0 <= level_index < len(loads) else None
        store_samples(run_id, level_index, batch, load=load)

    return sink


def sample_count(run) -> int:
    """How many raw samples are stored for a run."""
    from django.db.models import Sum

    return RawSampleChunk.objects.filter(run=run).aggregate(n=Sum("count"))["n"] or 0


def has_samples(run) -> bool:
    return RawSampleChunk.objects.filter(run=run).exists()


def iter_samples_csv(run) -> Iterator[bytes]:
    """The run's raw samples as CSV bytes (header first), one stored chunk at a time."""
    yield CSV_HEADER
    chunks = (
        RawSampleChunk.objects.filter(run=run)
        .order_by("level_index", "id")
        .values_list("data", flat=True)
        .iterator(chunk_size=READ_BATCH)
    )
    for data in chunks:
        yield zlib.decompress(bytes(data))
