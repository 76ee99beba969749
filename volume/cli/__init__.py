"""The ``volume`` command: a thin layer over the library (click for arguments, rich for people).

Every verb prints for people by default and JSON with ``--json`` (before or after the verb). Exit
status: 0 ok, 1 a check found problems, 2 a usage error or a failure (one line on stderr; the
traceback only with ``--debug``). A version is named by its locator URI or the path of its
version document.
"""

from __future__ import annotations

import sys
import traceback
import warnings
from typing import Sequence

import click

from .. import __version__
from ..errors import VolumeError
from ._common import EXIT_USAGE, Options, common

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="volume", message="%(prog)s %(version)s")
@common
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Immutable, versioned, forkable volumes on object storage.

    A VERSION is a locator URI (a version's produced_by.locator, e.g.
    file:///data/bucket/vol/_volume/versions/<id>/volume.json) or the path of a volume.json.
    """
    ctx.ensure_object(Options)


def _register() -> None:
    from . import _demo, _files, _maint, _versions

    for module in (_versions, _files, _maint, _demo):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def _one_line(exc: BaseException) -> str:
    raw = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
    text = " ".join(raw.split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {exc.strerror or text}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``volume`` command; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.simplefilter("ignore", RuntimeWarning)
            result = cli.main(args=args, prog_name="volume", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("volume: aborted", err=True)
        return EXIT_USAGE
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "volume"
        click.echo(f"volume: error: {_one_line(exc)} (see {where} --help)", err=True)
        return EXIT_USAGE
    except click.ClickException as exc:
        click.echo(f"volume: error: {_one_line(exc)}", err=True)
        return exc.exit_code
    except (VolumeError, OSError, ValueError, KeyError) as exc:
        if debug:
            traceback.print_exc()
        kind = type(exc).__name__
        click.echo(f"volume: error: {_one_line(exc)} ({kind})", err=True)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001  (one line unless --debug, as promised)
        if debug:
            traceback.print_exc()
        click.echo(
            f"volume: internal error: {type(exc).__name__}: {_one_line(exc)} "
            f"(run with --debug for the traceback)",
            err=True,
        )
        return 3
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
