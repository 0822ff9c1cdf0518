"""Reading the text files users hand us (.env, templates, CSVs, JSON sidecars) with one clear
line when they are not UTF-8 or not what they should be, instead of a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nacosae.errors import NacosaeError


def read_utf8(path: Path, what: str) -> str:
    """The file's text (a UTF-8 byte-order mark allowed); NacosaeError naming `what` when the
    bytes are not UTF-8."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NacosaeError(
            f"{what} {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8 and rerun"
        ) from None


def read_json(path: Path, what: str) -> Any:
    """The file's JSON value; NacosaeError naming `what` when it is not UTF-8 or not JSON."""
    text = read_utf8(path, what)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise NacosaeError(f"{what} {path} is not valid JSON ({exc}): fix or remove it") from None
