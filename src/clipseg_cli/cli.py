"""The ``clipseg`` command line: assembles the commands and turns errors into exit codes.

Exit codes: 0 done, 1 some input failed, 2 usage or set-up error, 128 + N stopped by signal N
(130 Ctrl-C, 129 SIGHUP, 143 SIGTERM), 141 stdout closed by its reader.
Importing this module does not import torch, so ``--help`` and ``--version`` are instant.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib.metadata import PackageNotFoundError, version

import typer

from clipseg_cli import __version__
from clipseg_cli.commands.batch import batch
from clipseg_cli.commands.download import download_weights
from clipseg_cli.commands.eval import eval_command
from clipseg_cli.commands.segment import segment
from clipseg_cli.commands.shards import shards
from clipseg_cli.commands.train import train_command
from clipseg_cli.errors import ClipSegError, ReaderGone, printable

INTERRUPTED = 130  # the shell's code for a Ctrl-C
READER_GONE = 128 + 13  # stdout closed by its reader (SIGPIPE), as shells report `yes | head -1`
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))

app = typer.Typer(
    name="clipseg",
    help="Cut objects out of images by a text prompt or an example image, with CLIPSeg.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("segment", no_args_is_help=True)(segment)
app.command("batch", no_args_is_help=True)(batch)
app.command("download-weights")(download_weights)
app.command("train", no_args_is_help=True)(train_command)
app.command("eval", no_args_is_help=True)(eval_command)
app.command("shards", no_args_is_help=True)(shards)


def _versions(value: bool) -> None:
    if not value:
        return
    found = []
    for package in ("torch", "transformers"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} not installed")
    typer.echo(f"clipseg {__version__} ({', '.join(found)})")
    raise typer.Exit(0)


@app.callback()
def root(
    show_version: bool = typer.Option(False, "--version", is_eager=True, callback=_versions,
                                      help="Print the versions of clipseg, torch and transformers."),
) -> None:
    """Cut objects out of images by a text prompt or an example image, with CLIPSeg."""


def main(argv: list[str] | None = None) -> int:
    """Run the command line; never shows a traceback unless CLIPSEG_DEBUG=1.

    Returns:
        The exit code (also passed to sys.exit when run as a program).
    """
    # Our decode and write threads share the cores with torch's OpenMP workers. Spinning workers
    # (libgomp's default) then steal the cores those threads need, and every small op waits for a
    # descheduled spinner: 15x slower element-wise ops were measured on 2 cores. Passive workers
    # sleep instead. Read once, when torch loads (a command imports it); a value the user set wins.
    # Only the command line sets it: a library import leaves the host process's environment alone.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    code = invoke(argv)
    if argv is None:
        sys.exit(code)
    return code


def invoke(argv: list[str] | None) -> int:
    """Run the command line and map every outcome to an exit code.

    SIGTERM and SIGHUP stop a run like Ctrl-C: the files being written are finished, the summary
    is printed, and the exit code is 128 + the signal's number.
    """
    with _signals_stop_the_run() as received:
        try:
            code = _dispatch(argv)
        except KeyboardInterrupt:  # a signal just after the command ended
            code = INTERRUPTED
    if received:
        code = 128 + received[0]
        _error(f"stopped by {signal.Signals(received[0]).name}; finished outputs are complete, rerun to do the rest")
    elif code == INTERRUPTED:
        _error("interrupted; finished outputs are complete, rerun to do the rest")
    return code


@contextmanager
def _signals_stop_the_run() -> Iterator[list[int]]:
    """While the command runs, SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread.

    Yields the list of signals received; only the first one interrupts, later ones are ignored
    while the run stops. Signals ignored already (nohup) stay ignored; the previous handlers are
    restored afterwards.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield received
        return

    def stop(signum: int, frame: object) -> None:
        received.append(signum)
        if len(received) == 1:
            raise KeyboardInterrupt

    # a signal ignored by whoever started us stays ignored: `nohup clipseg ...` survives its terminal
    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS
                if signal.getsignal(signum) is not signal.SIG_IGN}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _dispatch(argv: list[str] | None) -> int:
    try:
        return app(args=argv, prog_name="clipseg", standalone_mode=False) or 0  # Ctrl-C: typer returns 130
    except (typer.Abort, KeyboardInterrupt):  # older parsers turn Ctrl-C into Abort
        return INTERRUPTED
    except typer.TyperException as exc:  # usage errors, already worded by the parser
        exc.show()
        return 2
    except ClipSegError as exc:
        _error(str(exc))
        return 2
    except (ReaderGone, BrokenPipeError):  # e.g. `clipseg batch ... --json | head`: the reader is done, so are we
        with suppress(OSError, ValueError):  # stdout is not a file in in-process tests
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return READER_GONE
    except Exception as exc:
        if os.environ.get("CLIPSEG_DEBUG"):
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (rerun with CLIPSEG_DEBUG=1 for details)")
        return 1


def _error(message: str) -> None:
    print(printable(f"error: {' '.join(message.split())}"), file=sys.stderr)
