"""Progress display for the command line: when to show it, and a spinner for model loading.

Everything here writes to stderr only, so piped stdout stays clean. The library itself never
shows progress unless asked (``convert_hf_to_gguf(progress=True)``); the CLI asks when stderr
is a terminal, or when forced with ``--progress``.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Iterator, Optional

__all__ = ["enabled", "loading"]


def enabled(flag: Optional[bool]) -> bool:
    """``--progress`` (True) / ``--quiet`` (False) win; otherwise show progress on a TTY stderr."""
    if flag is not None:
        return flag
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


@contextlib.contextmanager
def loading(path: "str | os.PathLike[str]", show: bool) -> Iterator[None]:
    """Show ``loading NAME (SIZE MiB) | 00:01`` (a spinner, then the elapsed time) on stderr.

    Device.load_model is one blocking C++ call with no progress callback (it releases the
    GIL), so this is an indeterminate spinner with the elapsed time, redrawn by a thread; it
    claims no percentage it cannot know. The line is erased when loading ends.
    """
    if not show:
        yield
        return
    from tqdm import tqdm

    name = os.path.basename(os.fspath(path))
    try:
        size = f" ({os.path.getsize(path) / 2**20:.1f} MiB)"
    except OSError:
        size = ""
    desc = f"loading {name}{size}"
    bar = tqdm(total=None, desc=f"{desc} |", bar_format="{desc} {elapsed}", file=sys.stderr, leave=False,
               dynamic_ncols=True)
    stop = threading.Event()

    def spin() -> None:
        frames = "|/-\\"
        k = 0
        while not stop.wait(0.1):
            k += 1
            bar.set_description_str(f"{desc} {frames[k % len(frames)]}", refresh=True)

    t = threading.Thread(target=spin, name="bitnet-load-progress", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        bar.close()
