"""Reading the text files users hand us (.env, templates, CSVs, JSON sidecars) with one clear
line when they are not UTF-8 or not what they should be, instead of a traceback."""

from __future__ import annotations

import io
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


def csv_text(path: Path, what: str) -> io.StringIO:
    """The file as a text stream for `csv` (newlines left to it), via `read_utf8`."""
    return io.StringIO(read_utf8(path, what), newline="")


def utf8_or_latin1(path: Path) -> tuple[str, bool]:
    """The file's text, and whether it had to be read as Latin-1 because it is not UTF-8 (for
    files whose writers did not choose: `.env`, the original project's histories)."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        return raw.decode("latin-1"), True


def read_json(path: Path, what: str) -> Any:
    """The file's JSON value; NacosaeError naming `what` when it is not UTF-8 or not JSON."""
    text = read_utf8(path, what)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise NacosaeError(f"{what} {path} is not valid JSON ({exc}): fix or remove it") from None
