"""Progress on stderr: a ``rich`` bar if installed, else ``tqdm``, else plain lines.

The bars are only used on a terminal; piped or captured, plain lines are written instead (a
line when a task starts, at most one every few seconds while it runs, one when it ends), so a
log never fills with redraws.  Usage::

    progress = Progress.create()
    with progress.task("cycle", total=12) as task:
        for item in work:
            ...
            task.advance(item)      # the label shows which contender just finished
    progress.close()
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO

PLAIN_EVERY_S = 5.0


class _Task:
    def __init__(self, progress: "Progress", description: str, total: int):
        self.progress = progress
        self.description = description
        self.total = total
        self.done = 0
        self.t0 = time.perf_counter()
        self._last = self.t0
        self._handle: Any = None

    def advance(self, label: Optional[str] = None, n: int = 1) -> None:
        self.done += n
        self.progress._advance(self, label, n)

    def __enter__(self) -> "_Task":
        self.progress._start(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress._finish(self)


class Progress:
    """kind: "rich", "tqdm" or "plain" (see :meth:`create`)."""

    def __init__(self, kind: str = "plain", stream: Optional[TextIO] = None):
        self.kind = kind
        self.stream = stream or sys.stderr
        self._rich: Any = None
        if kind == "rich":
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TextColumn, TimeElapsedColumn)

            self._rich = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("{task.fields[label]}"),
                console=Console(file=self.stream), transient=True,
            )
            self._rich.start()

    @classmethod
    def create(cls, stream: Optional[TextIO] = None, plain: bool = False) -> "Progress":
        stream = stream or sys.stderr
        if plain or not getattr(stream, "isatty", lambda: False)():
            return cls("plain", stream)
        for kind, module in (("rich", "rich.progress"), ("tqdm", "tqdm")):
            try:
                __import__(module)
            except ImportError:
                continue
            return cls(kind, stream)
        return cls("plain", stream)

    def task(self, description: str, total: int) -> _Task:
        return _Task(self, description, max(1, total))

    def note(self, text: str) -> None:
        """A line that stays (above the bars)."""
        if self._rich is not None:
            self._rich.console.print(text, markup=False, highlight=False)
        elif self.kind == "tqdm":
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

    # -- backends ------------------------------------------------------------------------------

    def _start(self, task: _Task) -> None:
        if self._rich is not None:
            task._handle = self._rich.add_task(task.description, total=task.total, label="")
        elif self.kind == "tqdm":
            from tqdm import tqdm

            task._handle = tqdm(total=task.total, desc=task.description, file=self.stream,
                                leave=False, dynamic_ncols=True)
        else:
            self.note(f"... {task.description}")

    def _advance(self, task: _Task, label: Optional[str], n: int) -> None:
        if self._rich is not None:
            self._rich.update(task._handle, advance=n, label=label or "")
        elif self.kind == "tqdm":
            if label:
                task._handle.set_postfix_str(label, refresh=False)
            task._handle.update(n)
        else:
            now = time.perf_counter()
            if now - task._last >= PLAIN_EVERY_S and task.done < task.total:
                task._last = now
                self.note(f"    {task.done}/{task.total}" + (f" ({label})" if label else ""))

    def _finish(self, task: _Task) -> None:
        elapsed = time.perf_counter() - task.t0
        if self._rich is not None:
            self._rich.remove_task(task._handle)
        elif self.kind == "tqdm":
            task._handle.close()
        self.note(f"    {task.description}: done in {elapsed:.1f} s")
