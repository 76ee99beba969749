"""What every verb shares: the --json/--debug options, output, progress bars, version arguments."""

from __future__ import annotations

import contextlib
import inspect
import json
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


@dataclass
class Options:
    """The global flags, settable before or after the verb."""

    json: bool = False
    debug: bool = False


def options() -> Options:
    ctx = click.get_current_context()
    root = ctx.find_root()
    if root.obj is None:
        root.obj = Options()
    return root.obj


def _set_flag(name: str) -> Callable[[click.Context, click.Parameter, bool], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            setattr(options(), name, True)

    return callback


def common(func: Callable) -> Callable:
    """Give a verb the --json and --debug flags (the group has them too)."""
    func = click.option(
        "--debug", is_flag=True, expose_value=False, is_eager=True,
        callback=_set_flag("debug"), help="Show tracebacks of errors.",
    )(func)  # fmt: skip
    return click.option(
        "--json", "json_", is_flag=True, expose_value=False, is_eager=True,
        callback=_set_flag("json"), help="Print JSON for scripts instead of text.",
    )(func)  # fmt: skip


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def emit(data: Any, human: Callable[[Console], None] | str) -> None:
    """Print ``data`` as JSON with --json, else what ``human`` prints (or the string)."""
    if options().json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    out = console()
    if isinstance(human, str):
        out.print(human, markup=False)
    else:
        human(out)


def note(text: str) -> None:
    """A line for people on stderr (never with --json)."""
    if not options().json:
        console(stderr=True).print(text, markup=False)


def table(*columns: str, **kwargs: Any) -> Table:
    t = Table(box=None, pad_edge=False, header_style="bold", **kwargs)
    for c in columns:
        t.add_column(
            c,
            justify="right" if c in ("size", "bytes", "count", "old size", "new size") else "left",
        )
    return t


class _Rate(ProgressColumn):
    """Items per second."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} {self.unit}/s")


class Bar:
    """A progress task: ``advance(n)``, ``total`` settable later, or ``report(done, total,
    unit)`` as the library's progress callbacks call it (``volume.progress.Progress``)."""

    def __init__(self, progress: Progress | None, task: Any):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def set_total(self, total: int | None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total)

    def report(self, done: int, total: int, _unit: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total)


SHOW_AFTER = 1.0  # seconds: quicker work shows no bar at all


@contextlib.contextmanager
def progress(description: str, total: int | None = None, *, unit: str = "items") -> Iterator[Bar]:
    """A rich progress bar on stderr with rate and ETA, shown once the work has taken
    :data:`SHOW_AFTER` seconds (nothing with --json or off a terminal)."""
    if options().json or not sys.stderr.isatty():
        yield Bar(None, None)
        return
    if unit == "bytes":
        columns = [DownloadColumn(), TransferSpeedColumn()]
    else:
        columns = [MofNCompleteColumn(), _Rate(unit)]
    bar = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
        *columns, TimeElapsedColumn(), TimeRemainingColumn(),
        console=console(stderr=True), transient=True,
    )  # fmt: skip
    task = bar.add_task(description, total=total)
    lock, shown, over = threading.Lock(), [False], [False]

    def show() -> None:
        with lock:
            if not over[0]:
                bar.start()
                shown[0] = True

    timer = threading.Timer(SHOW_AFTER, show)
    timer.daemon = True
    timer.start()
    try:
        yield Bar(bar, task)
    finally:
        timer.cancel()
        with lock:
            over[0] = True
            if shown[0]:
                bar.stop()


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def examples(*lines: str) -> Callable[[Callable], Callable]:
    """Append an Examples section to a verb's --help."""

    def wrap(func: Callable) -> Callable:
        text = "\n".join(f"  $ {line}" for line in lines)
        # cleaned first: the unindented lines appended would otherwise keep a multi-paragraph
        # docstring's indentation in --help
        func.__doc__ = f"{inspect.cleandoc(func.__doc__ or '')}\n\n\b\nExamples:\n{text}\n"
        return func

    return wrap


def version_argument(name: str = "version") -> Callable[[Callable], Callable]:
    return click.argument(name, metavar=name.upper().replace("_", "-"))


def load(ref: str) -> Any:
    from ..fsspec import load_version

    return load_version(ref)


def version_row(v: Any) -> dict[str, Any]:
    """The fields of a version people and scripts want."""
    return {
        "name": v.name,
        "locator": v.produced_by.locator if v.produced_by else None,
        "message": v.message,
        "bucket": v.bucket,
        "storage": v.storage,
        "metadata_store_type": v.metadata_store_type,
        "used_bytes": v.used_bytes,
        "inode_count": v.inode_count,
        "index_bytes": v.index_bytes,
        "parent": v.parent_produced_by.locator if v.parent_produced_by else None,
        "produced_by": v.produced_by.name if v.produced_by else None,
    }
