"""``clipseg cache``: list what clipseg keeps under its cache root; ``clipseg cache clear``: remove it."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from clipseg_cli.commands.help_format import Command
from clipseg_cli.errors import ClipSegError

cache_app = typer.Typer(help="List clipseg's caches (ONNX graphs, prompt embeddings, training activations); "
                             "clear them.", invoke_without_command=True, no_args_is_help=False)


class What(str, Enum):
    onnx = "onnx"
    embeddings = "embeddings"
    activations = "activations"


def _rows(root: Path) -> list[tuple[str, Path, int, float, str]]:
    """Returns: (what, path, bytes, last use, what it is for) of every entry under ``root``."""
    from clipseg_cli.backends.graph_cache import describe, lock_path
    from clipseg_cli.cachedir import entries, last_use, size_of

    rows = []
    for entry in entries(root / "onnx"):
        about = describe(entry)
        made = f"{about.get('checkpoint', 'an unknown checkpoint')} (clipseg {about.get('clipseg', 'older')})"
        rows.append(("onnx", entry, size_of(entry), last_use(entry, lock_path(entry)),
                     f"ONNX graphs and bf16 programs of {made}"))
    for folder in entries(root / "embeddings"):
        entry = root / "onnx" / folder.name
        count = sum(1 for _ in folder.glob("*.npy"))
        rows.append(("embeddings", folder, size_of(folder), last_use(folder, lock_path(entry)),
                     f"{count} text prompt embedding(s) of the graphs {folder.name}"))
    activations = root / "activations"
    if activations.is_dir() and not activations.is_symlink():
        files = list(activations.glob("*.npy"))
        rows.append(("activations", activations, size_of(activations), last_use(activations, *files),
                     f"{len(files)} image activation file(s) of clipseg train"))
    return rows


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


def _root() -> Path:
    from clipseg_cli.cachedir import cache_root

    root = cache_root()
    if root.exists() and not root.is_dir():
        raise ClipSegError(f"cache root {root}: not a folder (set CLIPSEG_CACHE to a folder)")
    return root


@cache_app.callback()
def cache(ctx: typer.Context) -> None:
    """List clipseg's cache entries under its root: what each is for, its size and last use.

    The root is $CLIPSEG_CACHE, else $HF_HOME/clipseg (~/.cache/huggingface/clipseg).
    """
    if ctx.invoked_subcommand is not None:
        return
    root = _root()
    rows = _rows(root)
    typer.echo(f"clipseg cache: {root}")
    if not rows:
        typer.echo("nothing cached")
        return
    for what, path, size, used, about in rows:
        shown = time.strftime("%Y-%m-%d %H:%M", time.localtime(used)) if used else "-"
        typer.echo(f"{what:<12} {_size(size):>9}  {shown}  {path.relative_to(root)}  {about}")
    typer.echo(f"total {_size(sum(row[2] for row in rows))}")


def _kind(value: str | None) -> str | None:
    """A kind of entry, or a plain one-line error naming the kinds."""
    if value is not None and value not in {kind.value for kind in What}:
        kinds = ", ".join(kind.value for kind in What)
        raise typer.BadParameter(f"{value!r} is not a kind of entry; use one of {kinds}")
    return value


@cache_app.command("clear", cls=Command)
def clear(
    older_than: Annotated[float | None, typer.Option(
        "--older-than", min=0.0, metavar="DAYS", help="Only entries last used more than DAYS days ago.")] = None,
    what: Annotated[str | None, typer.Option(
        "--what", metavar="|".join(kind.value for kind in What), callback=_kind, help="Only this kind of entry.")]
    = None,
) -> None:
    """Remove cache entries (all, or those matching the options); graphs and activations a running clipseg uses
    are left (its prompt embeddings are removed: it embeds a prompt again)."""
    from clipseg_cli.backends.graph_cache import clear_embeddings, remove_entry
    from clipseg_cli.cachedir import remove, try_exclusive
    from clipseg_cli.training.activation_cache import LOCK_FILE

    root = _root()
    cutoff = time.time() - older_than * 86400 if older_than is not None else None
    removed = busy = freed = 0
    for kind, path, size, used, _ in _rows(root):
        if (what is not None and kind != what) or (cutoff is not None and used > cutoff):
            continue
        if kind == "activations":
            lock = try_exclusive(path / LOCK_FILE)
            if lock is None:
                busy += 1
                continue
            try:
                for item in path.glob("*.npy"):
                    if cutoff is None or item.lstat().st_mtime <= cutoff:
                        remove(item)
            except OSError as exc:
                raise ClipSegError(f"cannot remove {exc.filename or path}: {exc.strerror or exc}") from None
            finally:
                lock.release()
            done = True
        elif kind == "embeddings":  # removed even in use: a running server embeds a missing prompt again
            done = clear_embeddings(root / "onnx" / path.name)
        else:
            done = remove_entry(root / "onnx" / path.name, (kind,))
        if done:
            removed += 1
            freed += size
        else:
            busy += 1
    note = f"; {busy} in use by a running clipseg (or not removable), left" if busy else ""
    typer.echo(f"removed {removed} entr{'y' if removed == 1 else 'ies'} ({_size(freed)}) from {root}{note}")
