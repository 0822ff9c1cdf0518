"""Run the real CLI in a child process and SIGKILL it once its files show enough progress;
and `ctrl_c_at_llm_call`, a Ctrl-C at a chosen LLM call of an in-process run.

The child is forked from the test process, so it starts with every library already imported (a
fresh interpreter spends seconds importing torch, diffusers and transformers before it does
anything); it then runs the CLI's own entry point as `nacosae -q ARGS` would, in its own process,
and dies of a real SIGKILL.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def _run_cli(args: list[str], env: dict[str, str]) -> int:
    """In the child: the environment of a fresh `nacosae` process, then the CLI."""
    devnull = open(os.devnull, "w")  # noqa: SIM115 - the child's streams until it exits
    os.dup2(devnull.fileno(), 1)
    os.dup2(devnull.fileno(), 2)
    sys.stdout = sys.stderr = devnull  # new objects: no lock held by a thread of the parent
    os.environ.clear()
    os.environ.update(env)
    from nacosae.cli import app
    from nacosae.config import settings

    settings.cache_clear()
    try:
        app(["-q", *args])
    except SystemExit as end:
        return end.code if isinstance(end.code, int) else 1
    return 0


def kill_cli_when(
    args: list[str], env: dict[str, str], ready: Callable[[], bool], timeout: float
) -> bool:
    """Run `nacosae -q ARGS` in a child process; SIGKILL it as soon as `ready()` is true.
    Returns whether it was killed (False: it finished or timed out first)."""
    pid = os.fork()
    if pid == 0:  # the child never returns into the test
        code = 1
        try:
            code = _run_cli(args, env)
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    killed = False
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:  # it ended by itself
            return False
        if ready():
            os.kill(pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.01)
    if not killed:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return killed


@contextmanager
def ctrl_c_at_llm_call(number: int) -> Iterator[None]:
    """The local LLM's `number`-th batched call raises KeyboardInterrupt, as Ctrl-C there
    would: the phases before it are recorded, the one it belongs to is not."""
    import pytest

    from nacosae.models import language

    real = language.LocalLLM.chat_many
    calls = []

    def interrupted(self, requests):
        calls.append(1)
        if len(calls) == number:
            raise KeyboardInterrupt
        return real(self, requests)

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(language.LocalLLM, "chat_many", interrupted)
        yield
