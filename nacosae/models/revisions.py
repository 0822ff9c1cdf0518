"""The exact version of a model, for cache keys and run records.

A hub id resolves to the commit its revision points to (asked of the hub, or read from the local
HF cache when offline); a local folder resolves to a content hash of its files. Loading then
pins that version, so what is loaded is what the keys say. A moved hub repo or a retrained
local folder gives another version, hence a cache miss, never a stale hit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from nacosae import hub

FULL_HASH_BYTES = 64 * 1024**2  # files up to this size are hashed whole
SAMPLE_BLOCKS = 16  # larger files: this many evenly spaced 1 MiB blocks, plus the size
BLOCK = 1024**2

_fingerprints: dict[tuple[str, int, int], str] = {}


def is_local(model_id: str) -> bool:
    """A model id that names a folder (or a single-file model, e.g. GGUF) on disk rather than a
    hub repo."""
    return bool(model_id) and Path(model_id).expanduser().exists()


def file_fingerprint(path: Path) -> str:
    """sha256 of a file; for files over 64 MiB, of its size and 16 evenly spaced 1 MiB blocks
    (retrained weights differ everywhere, and reading 16 MiB of a 10 GB file is instant)."""
    stat = path.stat()
    memo_key = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo_key in _fingerprints:
        return _fingerprints[memo_key]
    digest = hashlib.sha256(str(stat.st_size).encode())
    with path.open("rb") as handle:
        if stat.st_size <= FULL_HASH_BYTES:
            for chunk in iter(lambda: handle.read(BLOCK), b""):
                digest.update(chunk)
        else:
            step = (stat.st_size - BLOCK) // (SAMPLE_BLOCKS - 1)
            for k in range(SAMPLE_BLOCKS):
                handle.seek(k * step)
                digest.update(handle.read(BLOCK))
    _fingerprints[memo_key] = digest.hexdigest()
    return _fingerprints[memo_key]


def folder_fingerprint(folder: Path) -> str:
    """`sha256:<hex>` over every (relative path, file fingerprint) of a model folder."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).expanduser().rglob("*") if p.is_file()):
        relative = path.relative_to(Path(folder).expanduser()).as_posix()
        if any(part.startswith(".") for part in relative.split("/")):
            continue  # .git, .cache and other tool folders are not the model
        digest.update(f"{relative}\0{file_fingerprint(path)}\n".encode())
    return f"sha256:{digest.hexdigest()[:40]}"


def resolve_revision(
    model_id: str,
    revision: str | None = None,
    *,
    what: str = "model",
    download_option: str = "",
) -> str:
    """The version of `model_id` to load and key caches by (see the module docstring)."""
    if is_local(model_id):
        path = Path(model_id).expanduser()
        return folder_fingerprint(path) if path.is_dir() else f"sha256:{file_fingerprint(path)}"
    if revision and hub.COMMIT_HASH.fullmatch(revision):
        return revision
    commit = None if hub.offline() else hub.remote_commit(model_id, revision)
    commit = commit or hub.cached_commit(model_id, revision or "main")
    if commit is None:
        raise hub.HubError(
            f"{what} {model_id} is not in the local cache and the hub cannot be reached"
            + (" (HF_HUB_OFFLINE is set)" if hub.offline() else "")
            + f": run `nacosae download models{download_option}` with network access first"
        )
    return commit


def from_pretrained_kwargs(model_id: str, revision: str | None) -> dict[str, Any]:
    """Where `from_pretrained` looks: the HF cache, offline when asked, at the pinned commit."""
    kwargs: dict[str, Any] = {"cache_dir": hub.cache_dir(), "local_files_only": hub.offline()}
    if revision and not is_local(model_id):
        kwargs["revision"] = revision
    return kwargs


def model_folder(model_id: str, revision: str | None = None) -> Path | None:
    """Where a model's files are on this machine: its folder, or its snapshot in the HF cache
    at `revision`; None when it is not there (nothing is downloaded)."""
    if is_local(model_id):
        path = Path(model_id).expanduser()
        return path if path.is_dir() else path.parent
    try:
        return hub.snapshot(model_id, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (or not a repo): the caller says what to do
        return None
