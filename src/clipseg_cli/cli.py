"""The ``clipseg`` command line: assembles the commands and turns errors into exit codes.

Exit codes: 0 done, 1 some input failed, 2 usage or set-up error, 128 + N stopped by signal N
(130 Ctrl-C, 129 SIGHUP, 143 SIGTERM), 141 stdout closed by its reader.
Importing this module does not import torch, so ``--help`` and ``--version`` are instant.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib.metadata import PackageNotFoundError, version

import typer

from clipseg_cli import LOGGER, __version__
from clipseg_cli.commands.batch import batch
from clipseg_cli.commands.cache_admin import cache_app
from clipseg_cli.commands.download_weights import download_weights
from clipseg_cli.commands.eval import eval_command
from clipseg_cli.commands.help_format import Command, Group, show_usage_error
from clipseg_cli.commands.label import label_command
from clipseg_cli.commands.report import ClosedStdout
from clipseg_cli.commands.segment import segment
from clipseg_cli.commands.serve import serve
from clipseg_cli.commands.shards import shards
from clipseg_cli.commands.train import train_command
from clipseg_cli.commands.video import video
from clipseg_cli.errors import ClipSegError, ReaderGone, printable

INTERRUPTED = 130  # the shell's code for a Ctrl-C
READER_GONE = 128 + 13  # stdout closed by its reader (SIGPIPE), as shells report `yes | head -1`
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))

EXAMPLES = {  # the end of each command's --help: one command a line
    "segment": """clipseg segment examples/chelsea.jpg cat
clipseg segment examples/coffee.jpg "coffee cup" spoon --cutout --bg-color white -o out/
clipseg segment examples/rocket.jpg rocket --overlay-color 0,114,178 --threshold 0.5
cat examples/chelsea.jpg | clipseg segment - cat --stdout cutout > cat.png""",
    "batch": """clipseg batch examples/ -p cat -p "coffee cup" -o masks/ --json > results.jsonl
find shots/ -name '*.jpg' | clipseg batch - -p dog -o masks/ -q; echo "exit $?"
clipseg batch shots/ -r -p car -o masks/ --shard auto
clipseg batch inbox/ -p cat -o masks/ --watch""",
    "download-weights": """clipseg download-weights
clipseg download-weights --list
clipseg download-weights CIDAS/clipseg-rd16 --output-dir weights/rd16
clipseg download-weights weights/rd16 --prepare""",
    "train": """clipseg train records.jsonl --weights CIDAS/clipseg-rd64-refined -o tuned/ --epochs 20
clipseg train records.jsonl -o tuned/ --val holdout.jsonl --resume""",
    "eval": """clipseg eval records.jsonl --precision fp32
clipseg eval holdout.jsonl --weights tuned/ --json
clipseg eval records.jsonl --blur 2 --plot curves.png""",
    "shards": """clipseg shards masks/ --count 100
clipseg shards masks/ --count 100 || sbatch --array=3,7 masks.sh""",
    "serve": """clipseg serve
clipseg serve --ray --replicas 2 --batch-size 8
CLIPSEG_TOKEN=secret clipseg serve --host 0.0.0.0""",
    "label": """clipseg label photos/ -r -p car -p "person=person,cyclist" -o data/ --format yolo --split 0.8,0.1,0.1
clipseg label photos/ -p car -o dataset/ --shard 3/10
clipseg label dataset/ --merge -o dataset/ --preview 16""",
    "video": """clipseg video clip.mp4 -p dog -o out/
clipseg video shots/ -r -p "red car" --cutout --cutout-format webm -o out/ --json
clipseg video interview.mov -p person --smooth 0.5 --no-overlay --cutout -o out/""",
    "cache": """clipseg cache
clipseg cache clear --older-than 30
clipseg cache clear --what embeddings""",
}


class RootGroup(Group):
    """``clipseg`` itself: a reader that goes away (BrokenPipeError) ends any command with 141, not click's 1."""

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            raise ReaderGone from exc


app = typer.Typer(
    name="clipseg",
    cls=RootGroup,
    help="Cut objects out of images by a text prompt or an example image, with CLIPSeg.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("segment", cls=Command, no_args_is_help=True, epilog=EXAMPLES["segment"])(segment)
app.command("batch", cls=Command, no_args_is_help=True, epilog=EXAMPLES["batch"])(batch)
app.command("download-weights", cls=Command, epilog=EXAMPLES["download-weights"])(download_weights)
app.command("train", cls=Command, no_args_is_help=True, epilog=EXAMPLES["train"])(train_command)
app.command("eval", cls=Command, no_args_is_help=True, epilog=EXAMPLES["eval"])(eval_command)
app.command("shards", cls=Command, no_args_is_help=True, epilog=EXAMPLES["shards"])(shards)
app.command("serve", cls=Command, epilog=EXAMPLES["serve"])(serve)
app.command("label", cls=Command, no_args_is_help=True, epilog=EXAMPLES["label"])(label_command)
app.command("video", cls=Command, no_args_is_help=True, epilog=EXAMPLES["video"])(video)
app.add_typer(cache_app, name="cache", cls=Group, epilog=EXAMPLES["cache"])


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
    for name in ("HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME"):  # empty means unset (huggingface_hub: ./ instead)
        if os.environ.get(name) == "":
            del os.environ[name]
    show_the_log()
    if sys.stdout is None:  # closed by the shell (>&-): a write to it is one line, not an AttributeError
        sys.stdout = ClosedStdout()
    if sys.stderr is None:  # closed (2>&-): print(file=None) would write our messages into stdout's JSON lines
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
    code = invoke(argv)
    if argv is None:
        sys.exit(code)
    return code


class _LogLines(logging.Handler):
    """The library's log as the command line shows it: ``clipseg: MESSAGE`` on the stderr of the moment (a test's
    captured one included), above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(f"clipseg: {record.getMessage()}", file=sys.stderr)
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def show_the_log() -> None:
    """Show the ``clipseg`` logger's lines from INFO up (once per process; the library decides what it says when
    the command is quiet: it is given ``progress=False``)."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(handler, _LogLines) for handler in logger.handlers):
        logger.addHandler(_LogLines())
        logger.setLevel(logging.INFO)
        logger.propagate = False


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
        _error(f"stopped by {signal.Signals(received[0]).name}; {_after_a_stop(argv)}")
    elif code == INTERRUPTED:
        _error(f"interrupted; {_after_a_stop(argv)}")
    return code


RESUMES = "finished outputs are complete, rerun to do the rest"
AFTER_A_STOP = {  # what a stopped command leaves behind, and what to do next
    "segment": RESUMES, "batch": RESUMES, "label": RESUMES, "video": RESUMES,
    "serve": "the server is down",
    "train": "training stopped (--resume continues after the last complete epoch, when one finished)",
    "eval": "no metrics were printed; rerun to score the manifest",
    "download-weights": "files fetched completely are kept; rerun to fetch the rest",
    "cache": "what was removed is gone, the rest is intact; rerun to finish",
    "shards": "nothing was changed; rerun to check the shards",
}


def _after_a_stop(argv: list[str] | None) -> str:
    """What the interrupted command's user should know: the state it left and the next step."""
    words = [word for word in (sys.argv[1:] if argv is None else argv) if not word.startswith("-")]
    return AFTER_A_STOP.get(words[0] if words else "", "nothing was left half-done")


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
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help, shown for a command given nothing
            exc.show()
        else:
            show_usage_error(exc)
        return getattr(exc, "exit_code", 2)
    except ClipSegError as exc:
        _error(str(exc))
        return 2
    except (ReaderGone, BrokenPipeError) as exc:  # `clipseg batch ... --json | head`: the reader is done, so are we
        with suppress(OSError, ValueError):  # stdout is not a file in in-process tests
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        if str(exc):  # stdout closed before we started: say so
            _error(str(exc))
        return READER_GONE
    except Exception as exc:
        if os.environ.get("CLIPSEG_DEBUG"):
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (rerun with CLIPSEG_DEBUG=1 for details)")
        return 1


def _error(message: str) -> None:
    print(printable(f"error: {' '.join(message.split())}"), file=sys.stderr)
