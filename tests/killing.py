"""Run the real CLI in a child process and SIGKILL it once its files show enough progress."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable


def kill_cli_when(
    args: list[str], env: dict[str, str], ready: Callable[[], bool], timeout: float
) -> bool:
    """Start `python -m nacosae -q ARGS`; SIGKILL it as soon as `ready()` is true.
    Returns whether it was killed (False: it finished or timed out first)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nacosae", "-q", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.01)
    if proc.poll() is None and not killed:
        proc.kill()
    proc.wait()
    return killed
