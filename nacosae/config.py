"""Settings read once from the environment and `.env`.

`.env` in the working directory fills in what the environment does not set (the environment
wins, as with python-dotenv's default). The HF token is held but never shown: its repr is masked.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from dotenv import dotenv_values

ENV_KEYS = ("HF_TOKEN", "NACOSAE_HOME", "SAVE_DIR", "HF_HOME")


@dataclass(frozen=True)
class Settings:
    """Resolved paths and credentials for one process."""

    nacosae_home: Path
    save_dir: Path
    hf_home: Path | None = None
    hf_token: str | None = field(default=None, repr=False)

    @property
    def controls_dir(self) -> Path:
        return self.nacosae_home / "controls"

    @property
    def data_dir(self) -> Path:
        return self.nacosae_home / "data"

    @property
    def default_imagenet_dir(self) -> Path:
        """Where `controls` reads control images by default: the validation split."""
        return self.imagenet_dir("validation")

    def imagenet_dir(self, split: str) -> Path:
        """Each split's own default tree (`val`, `train`), so a train download never lands in
        the validation tree that `controls` reads."""
        return self.data_dir / "imagenet" / ("val" if split == "validation" else split)


def _merged_environment(dotenv_path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if dotenv_path.is_file():
        found = dotenv_values(stream=io.StringIO(_dotenv_text(dotenv_path)))
        values.update({k: v for k, v in found.items() if v is not None})
    values.update({k: v for k, v in os.environ.items() if k in ENV_KEYS})
    return values


def _dotenv_text(path: Path) -> str:
    """`.env` as text: UTF-8, else Latin-1 (said once), so that an editor's encoding never
    stops every command."""
    from nacosae.textfiles import utf8_or_latin1

    text, latin1 = utf8_or_latin1(path)
    if latin1:
        from nacosae import progress

        progress.warn(f"{path} is not UTF-8; read as Latin-1 (save it as UTF-8 to silence this)")
    return text


def load_settings(dotenv_path: Path | None = None) -> Settings:
    """Build settings from the environment and `.env` (default: `./.env`)."""
    env = _merged_environment(dotenv_path or Path.cwd() / ".env")
    home = Path(env.get("NACOSAE_HOME") or Path.home() / ".cache" / "nacosae").expanduser()
    save_dir = Path(env.get("SAVE_DIR") or "runs").expanduser()
    hf_home = Path(env["HF_HOME"]).expanduser() if env.get("HF_HOME") else None
    if hf_home is not None:
        # huggingface_hub reads HF_HOME from the process environment when it is imported.
        os.environ.setdefault("HF_HOME", str(hf_home))
    if env.get("HF_TOKEN"):
        # so that transformers/diffusers loaders fetching a gated model see a token set in .env
        os.environ.setdefault("HF_TOKEN", env["HF_TOKEN"])
    return Settings(
        nacosae_home=home, save_dir=save_dir, hf_home=hf_home, hf_token=env.get("HF_TOKEN") or None
    )


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process-wide settings, parsed on first use."""
    return load_settings()


def writable_folder(path: Path, what: str, create: bool = True) -> Path:
    """Make sure `path` is (or, with `create=False`, can become) a folder this process can
    write, before any work starts; otherwise one error naming `what` (e.g. "--out") and why."""
    import tempfile

    from nacosae.errors import NacosaeError

    path = Path(path).expanduser().absolute()
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise NacosaeError(
            f"{what} {path} cannot be a folder: {blocker} is a file; choose another location"
        )
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        else:
            existing = next(p for p in (path, *path.parents) if p.exists())
            if not os.access(existing, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied", str(existing))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise NacosaeError(
            f"{what} {path} is not writable ({reason.lower()}): choose another location or fix "
            "its permissions"
        ) from exc
    return path
