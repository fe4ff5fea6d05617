"""A full disk, told apart from other storage errors: the database (SQLite's file, PostgreSQL's data
folder) and the data folder (EMBPERF_VAR_DIR: unsaved results, raw samples) may fill up.

Everything that writes asks `is_storage_full` to say so in its own words: the worker keeps what it
measured and names the full disk in the run's reason, the API answers 503 with STORAGE_FULL.
"""
import errno
import shutil
from pathlib import Path

from django.conf import settings

STORAGE_FULL = "the portal's storage is full"
# What SQLite and PostgreSQL say when they cannot extend a file, and the C library's ENOSPC.
FULL_MARKERS = ("database or disk is full", "no space left on device", "disk full", "could not extend file",
                "could not write to file", "sqlite_full")
# Below this much free space the data folder or SQLite's folder counts as full (an I/O error there is the disk).
NEARLY_FULL_BYTES = 256 * 1024


def _folders() -> list[Path]:
    folders = [Path(settings.VAR_DIR)]
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3") and database["NAME"] != ":memory:":
        folders.append(Path(database["NAME"]).parent)
    return folders


def disk_nearly_full() -> bool:
    """True when the data folder or SQLite's folder has (almost) no free space left."""
    for folder in _folders():
        try:
            if shutil.disk_usage(folder).free < NEARLY_FULL_BYTES:
                return True
        except OSError:
            continue
    return False


def is_storage_full(exc: BaseException | str | None) -> bool:
    """Whether this error (or its text) means a full disk; an I/O error while the disk is nearly full counts."""
    if exc is None:
        return False
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    chain = [exc]
    while isinstance(chain[-1], BaseException) and chain[-1].__cause__ is not None and len(chain) < 5:
        chain.append(chain[-1].__cause__)
    text = " ".join(str(item) for item in chain).lower()
    if any(marker in text for marker in FULL_MARKERS):
        return True
    return ("disk i/o error" in text or "input/output" in text) and disk_nearly_full()
