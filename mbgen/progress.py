"""What mbgen is doing, on stderr: a status line on a terminal, the commands it runs with -v.

The status line (``mbgen: calibrating... 3.1 s``) is drawn only when stderr is a terminal and
erased when the stage ends, so pipes, logs and ``--json`` output never see it. ``-v`` prints
every build and QEMU command line, one per line, whatever stderr is.
"""

from __future__ import annotations

import shlex
import sys
import threading
import time
from contextlib import contextmanager
from collections.abc import Iterator, Sequence
from pathlib import Path

_state = {"verbose": False, "status": None}   # status: None = auto (stderr is a terminal)
_stages: list[tuple[str, float]] = []
_lock = threading.Lock()
TICK_SECONDS = 0.5


def configure(verbose: bool = False, status: bool | None = None) -> None:
    """``verbose``: print commands; ``status``: force the status line on/off (None: auto)."""
    _state["verbose"] = verbose
    _state["status"] = status


def _status_on() -> bool:
    if _state["status"] is not None:
        return bool(_state["status"])
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _draw(text: str) -> None:
    sys.stderr.write("\r\033[K" + text)
    sys.stderr.flush()


def update(detail: str = "") -> None:
    """Redraw the current stage's line with ``detail`` (e.g. the file being compiled)."""
    if not _stages or not _status_on():
        return
    with _lock:
        if not _stages:
            return
        what, start = _stages[-1]
        extra = f" {detail}" if detail else ""
        _draw(f"mbgen: {what}...{extra} ({time.monotonic() - start:.0f} s)")


def _tick(done: threading.Event) -> None:
    """Keeps the elapsed seconds moving while a long step blocks the main thread."""
    while not done.wait(TICK_SECONDS):
        update()


@contextmanager
def stage(what: str) -> Iterator[None]:
    """A named step (calibrating, building, running in QEMU) shown while it lasts."""
    _stages.append((what, time.monotonic()))
    update()
    done = threading.Event()
    ticker = None
    if _status_on():
        ticker = threading.Thread(target=_tick, args=(done,), daemon=True)
        ticker.start()
    try:
        yield
    finally:
        done.set()
        if ticker is not None:
            ticker.join()
        with _lock:
            _stages.pop()
            if _status_on():
                _draw("")
        if _stages:
            update()


def command(argv: Sequence[str | Path], cwd: Path | None = None) -> None:
    """With -v: the command line about to run (a shell could paste it)."""
    if not _state["verbose"]:
        return
    line = shlex.join(str(a) for a in argv)
    where = f"(cd {shlex.quote(str(cwd))} && {line})" if cwd is not None else line
    if _stages and _status_on():
        _draw("")
    print(f"+ {where}", file=sys.stderr, flush=True)
    update()
