"""nacosae's own calls to the Hugging Face hub's API (through huggingface_hub): downloads,
listings, commit lookups, and where the cache is and whether the hub is offline.

The model libraries (transformers, diffusers, sentence-transformers, timm) fetch their files
themselves; their loaders are pointed at the same cache and offline switch through
`cache_dir()` and `offline()` (models/revisions.py `from_pretrained_kwargs`).

Downloads land in the standard HF cache (HF_HOME) and resume after an interruption. Hub
errors become one-line `NacosaeError`s that say what to do: set a token, accept a gated
dataset's terms, check the id, or run `nacosae download ...` before going offline.
`HF_ENDPOINT` is honoured at call time (mirrors, and the tests' local fake hub).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from nacosae.errors import NacosaeError

COMMIT_HASH = re.compile(r"[0-9a-f]{40}")


class HubError(NacosaeError):
    """The hub refused or could not serve a request."""


def endpoint() -> str | None:
    value = os.environ.get("HF_ENDPOINT")
    return value.rstrip("/") if value else None


def cache_dir() -> str | None:
    """HF_HUB_CACHE, else HF_HOME/hub, read now (huggingface_hub reads them once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def default_cache_dir() -> str:
    """huggingface_hub's own cache location (HF_HOME/hub or ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("", "0", "false", "no")


def repo_url(repo_id: str, repo_type: str) -> str:
    base = endpoint() or "https://huggingface.co"
    return f"{base}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"


def fetch_command(repo_type: str) -> str:
    return "`nacosae download imagenet`" if repo_type == "dataset" else "`nacosae download models`"


def _translate(exc: Exception, repo_id: str, repo_type: str, token: str | None) -> HubError:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = "dataset" if repo_type == "dataset" else "model"
    url = repo_url(repo_id, repo_type)
    if isinstance(exc, GatedRepoError):
        if token is None:
            return HubError(
                f"{what} {repo_id} is gated and no token is set: accept its terms at {url}, then "
                "set HF_TOKEN (environment or .env) or pass --token"
            )
        return HubError(
            f"your token may not read the gated {what} {repo_id}: accept its terms at {url} "
            "with the account of HF_TOKEN"
        )
    if isinstance(exc, RepositoryNotFoundError):
        hint = " or your token is rejected" if token else ""
        return HubError(f"{what} {repo_id!r} does not exist on the hub{hint}: check the id")
    if isinstance(exc, RevisionNotFoundError):
        return HubError(f"{what} {repo_id} has no such revision: check --revision")
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status == 401:
            return HubError(
                f"the hub rejected the token for {what} {repo_id} (401): check HF_TOKEN / --token"
            )
        if status == 403:
            return HubError(
                f"access to {what} {repo_id} is denied (403): accept its terms at {url}"
            )
        return HubError(f"the hub answered {status} for {what} {repo_id}: try again later")
    if isinstance(exc, LocalEntryNotFoundError):
        return HubError(
            f"{what} {repo_id} is not in the local cache and the hub cannot be reached"
            + (" (HF_HUB_OFFLINE is set)" if offline() else "")
            + f": run {fetch_command(repo_type)} with network access first"
        )
    return HubError(f"download of {what} {repo_id} failed: {exc}".splitlines()[0])


def snapshot(
    repo_id: str,
    repo_type: str = "model",
    *,
    token: str | None = None,
    revision: str | None = None,
    allow_patterns: Sequence[str] | None = None,
    ignore_patterns: Sequence[str] | None = None,
    local_files_only: bool = False,
) -> Path:
    """Download (or find in the cache) the matching files of a repo; returns the snapshot dir."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            repo_id,
            repo_type=repo_type,
            revision=revision,
            token=token,
            allow_patterns=list(allow_patterns) if allow_patterns else None,
            ignore_patterns=list(ignore_patterns) if ignore_patterns else None,
            endpoint=endpoint(),
            cache_dir=cache_dir(),
            local_files_only=local_files_only or offline(),
        )
    except NacosaeError:
        raise
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes one clear line
        raise _translate(exc, repo_id, repo_type, token) from exc
    return Path(path)


def list_files(
    repo_id: str, repo_type: str = "model", *, token: str | None = None, revision: str | None = None
) -> list[str]:
    """Every file path of a repo at `revision`."""
    from huggingface_hub import HfApi

    try:
        return HfApi(endpoint=endpoint(), token=token).list_repo_files(
            repo_id, repo_type=repo_type, revision=revision
        )
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc, repo_id, repo_type, token) from exc


def delete_cached(repo_id: str, repo_type: str = "model") -> int:
    """Remove every cached revision of a repo from the HF cache; returns the bytes freed."""
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(cache_dir())
    for repo in info.repos:
        if repo.repo_id == repo_id and repo.repo_type == repo_type:
            strategy = info.delete_revisions(*(r.commit_hash for r in repo.revisions))
            strategy.execute()
            return strategy.expected_freed_size
    return 0


def cached_commit(repo_id: str, revision: str = "main", repo_type: str = "model") -> str | None:
    """The commit a branch or tag points to in the local HF cache (`refs/<revision>`), if any."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = Path(cache_dir() or constants.HF_HUB_CACHE)
    folder = root / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
    if COMMIT_HASH.fullmatch(revision):
        return revision if (folder / "snapshots" / revision).is_dir() else None
    ref = folder / "refs" / revision
    return ref.read_text().strip() if ref.is_file() else None


def remote_commit(
    repo_id: str, revision: str | None = None, *, token: str | None = None
) -> str | None:
    """The commit `revision` (default: main) points to on the hub; None when the hub cannot be
    reached. A missing repo or revision is an error."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        info = HfApi(endpoint=endpoint(), token=token).model_info(repo_id, revision=revision)
    except HfHubHTTPError as exc:
        if exc.response is not None and exc.response.status_code >= 500:
            return None
        raise _translate(exc, repo_id, "model", token) from exc
    except Exception:  # noqa: BLE001 - no network: the caller falls back to the local cache
        return None
    return info.sha


def cached_files(repo_id: str, repo_type: str = "model") -> list[str]:
    """Paths of the files cached for a repo's most recent revision (none: an offline error)."""
    from huggingface_hub import scan_cache_dir

    cache = cache_dir()
    if cache is not None and not os.path.isdir(cache):
        cache = None
    repos = scan_cache_dir(cache).repos if cache is not None else []
    for repo in repos:
        if repo.repo_id == repo_id and repo.repo_type == repo_type and repo.revisions:
            latest = max(repo.revisions, key=lambda r: r.last_modified)
            return sorted(
                f.file_path.relative_to(latest.snapshot_path).as_posix() for f in latest.files
            )
    what = "dataset" if repo_type == "dataset" else "model"
    raise HubError(
        f"{what} {repo_id} is not in the local cache and the hub cannot be reached (HF_HUB_OFFLINE "
        f"is set): run {fetch_command(repo_type)} with network access first"
    )
