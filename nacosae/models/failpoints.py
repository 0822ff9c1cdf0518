"""Fault injection: `NACOSAE_FAILPOINTS=t2i.oom=1,llm.oom=2` raises, at the N-th call of a named
point (`N+`: at the N-th and every later call), the error the real failure raises, so that
recovery paths run through the real code on any machine (a CPU has no out-of-memory errors to
give). Points: `t2i.oom`, `llm.oom`, `vision.oom` (torch.OutOfMemoryError). Calls are counted
per process; unset, a check costs one dictionary lookup.
"""

from __future__ import annotations

import os
import threading
from collections import Counter

VARIABLE = "NACOSAE_FAILPOINTS"
_calls: Counter[str] = Counter()
_lock = threading.Lock()


def armed() -> dict[str, tuple[int, bool]]:
    """The points of NACOSAE_FAILPOINTS: name -> (the call that fails, and every later one)."""
    points: dict[str, tuple[int, bool]] = {}
    for part in os.environ.get(VARIABLE, "").split(","):
        name, _, count = part.strip().partition("=")
        count = count.strip()
        if name and count.rstrip("+").isdigit():
            points[name] = (int(count.rstrip("+")), count.endswith("+"))
    return points


def check(name: str) -> None:
    """Count a call of point `name`; raise its failure at the armed call(s)."""
    if VARIABLE not in os.environ:
        return
    found = armed().get(name)
    if found is None:
        return
    at, onwards = found
    with _lock:
        _calls[name] += 1
        calls = _calls[name]
    if calls == at or (onwards and calls > at):
        raise _failure(name)


def _failure(name: str) -> BaseException:
    if name.endswith(".oom"):
        import torch

        return torch.OutOfMemoryError(f"CUDA out of memory (failpoint {name})")
    raise ValueError(f"unknown failpoint {name!r}: use t2i.oom, llm.oom or vision.oom")


def reset() -> None:
    """Forget the calls counted (a new command in the same process counts from zero)."""
    with _lock:
        _calls.clear()
