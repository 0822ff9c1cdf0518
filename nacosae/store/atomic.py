"""Atomic file replacement: write to a temporary sibling, fsync, rename over the target.

A reader never sees a half-written file; a killed writer leaves at most a `*.tmp-*` file, which
the next writer overwrites or `remove_stale_temporaries` clears.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _process_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return mask


# the mode an ordinary new file gets here: every atomic write ends with it, whatever its writer
# chose (safetensors creates its files 0600, which a lab-shared NACOSAE_HOME could not read)
FILE_MODE = 0o666 & ~_process_umask()


def _temporary_for(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` to produce the file, then move it to `path` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_for(path)
    try:
        write(tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.chmod(FILE_MODE)
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def remove_stale_temporaries(directory: Path) -> None:
    """Delete `*.tmp-*` leftovers of killed writers."""
    for leftover in directory.glob("*.tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def exclusive(path: Path) -> Any:
    """Hold an exclusive flock on `path` (created) for the block: work that several processes
    may start at once on a shared NACOSAE_HOME (building the smoke models) runs once, the
    others wait and then find it done. Where flock is missing (Windows) it does not wait."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
