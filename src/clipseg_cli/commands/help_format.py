"""How every command's ``--help`` and usage errors read: plain text, wrapped at whole words to the terminal's width.

A two-column table of options squeezes its help into a narrow column at 80 columns, cuts long words (``…``) and
folds metavars mid-word; here the names take the room they need and the help goes on the next line when they
are long, so nothing is cut and no word is split.
"""

from __future__ import annotations

import re
import shutil
import sys
import textwrap

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from clipseg_cli.errors import printable

NAMES_COLUMN = 30  # names up to this wide keep their help beside them; longer ones put it on the next line
HELP_INDENT = 6  # the help's indent when it goes below its names, or when the terminal is too narrow for a column
NARROWEST_HELP = 30  # narrower than this beside the names, the help goes below them
OPTIONS_PANEL = "Options"
KEEP_TOGETHER = "\N{NO-BREAK SPACE}"  # a space textwrap never breaks at: "[default: 0.5]" stays on one line


def readable(params: list) -> list:
    """Make parameters' help show what to type: no ``<bool>`` after a flag, ``NAME`` for a value or an argument.

    Returns:
        The same parameters (changed in place; doing it again changes nothing).
    """
    for param in params:
        if param.metavar is None:
            flag = isinstance(param, TyperOption) and (param.is_flag or param.count)
            param.metavar = "" if flag else (param.name or "value").upper()
    return params


def usage_pieces(command: TyperCommand | TyperGroup, ctx: typer.Context) -> list[str]:
    """The usage line after the command's name: ``[OPTIONS] IMAGE [PROMPT]...`` (no type names, no braces).

    Returns:
        The pieces, in order.
    """
    pieces = ["[OPTIONS]"]
    for param in command.get_params(ctx):
        if isinstance(param, TyperArgument):
            name = param.metavar or (param.name or "value").upper()
            name = name if param.required else f"[{name}]"
            pieces.append(name + ("..." if param.nargs != 1 else ""))
    if isinstance(command, TyperGroup):
        pieces.append("COMMAND [ARGS]...")
    return pieces


def render_help(command: TyperCommand | TyperGroup, ctx: typer.Context, width: int | None = None) -> str:
    """The whole ``--help`` text of ``command``: usage, description, arguments, options by panel, commands,
    examples; every line within ``width`` (the terminal's by default) unless one word alone is wider.

    Returns:
        The text, ending with a newline.
    """
    width = max(40, width or shutil.get_terminal_size((80, 24)).columns)
    out = _wrap(f"Usage: {ctx.command_path} {' '.join(usage_pieces(command, ctx))}", width, "", " " * 7)
    for paragraph in textwrap.dedent(command.help or "").strip().split("\n\n"):
        if paragraph.strip():
            out += ["", *_wrap(" ".join(paragraph.split()), width, "  ", "  ")]
    for title, rows in _sections(command, ctx):
        out += ["", f"{title}:", *_table(rows, width)]
    if command.epilog:
        out += ["", "Examples:"]
        for example in command.epilog.strip().splitlines():
            out += _example(example.strip(), width)
    return "\n".join(out) + "\n"


def _sections(command: TyperCommand | TyperGroup, ctx: typer.Context) -> list[tuple[str, list[tuple[str, str]]]]:
    """(title, [(names, help)]) for the arguments, each options panel in order of appearance, and subcommands."""
    arguments: list[tuple[str, str]] = []
    panels: dict[str, list[tuple[str, str]]] = {OPTIONS_PANEL: []}
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        if isinstance(param, TyperArgument):
            name = param.metavar or (param.name or "value").upper()
            arguments.append((name + ("..." if param.nargs != 1 else ""), _described(param, ctx)))
        else:
            panel = getattr(param, "rich_help_panel", None) or OPTIONS_PANEL
            panels.setdefault(panel, []).append((_option_names(param), _described(param, ctx)))
    sections = [("Arguments", arguments)] if arguments else []
    sections += [(title, rows) for title, rows in panels.items() if rows]
    if isinstance(command, TyperGroup):
        commands = [(name, command.get_command(ctx, name)) for name in command.list_commands(ctx)]
        sections.append(("Commands", [(name, _summary(sub)) for name, sub in commands if sub and not sub.hidden]))
    return _align_long_names(sections)


def _option_names(param: TyperOption) -> str:
    """``-o, --output-dir DIR``, ``--overlay / --no-overlay``: the spellings, then what to type (none for a flag)."""
    shorts = [opt for opt in param.opts if not opt.startswith("--")]
    longs = [opt for opt in param.opts if opt.startswith("--")]
    names = ", ".join([*shorts, *longs])
    if param.secondary_opts:
        names += " / " + ", ".join(param.secondary_opts)
    if param.metavar and not (param.is_flag or param.count):
        names += f" {param.metavar}"
    return names if shorts else f"    {names}"


def _align_long_names(sections: list[tuple[str, list[tuple[str, str]]]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Drop the 4-space room left for a short name where no option of the section has one."""
    aligned = []
    for title, rows in sections:
        if all(names.startswith("    ") for names, _ in rows):
            rows = [(names[4:], text) for names, text in rows]
        aligned.append((title, rows))
    return aligned


def _described(param: TyperOption | TyperArgument, ctx: typer.Context) -> str:
    """The help text, then ``[default: ...]``, the range and ``[required]``, each in its own brackets."""
    text = re.sub(r"(\d) %", rf"\1{KEEP_TOGETHER}%", " ".join((param.help or "").split()))  # "99 %" on one line
    record = param.get_help_record(ctx)
    extras = record[1][len(param.help or ""):].strip() if record else ""
    if extras.startswith("[") and extras.endswith("]"):
        for extra in extras[1:-1].split("; "):
            text += " [" + _in_words(extra).replace(" ", KEEP_TOGETHER) + "]"
    return text.replace("\\[", "[").strip()


def _in_words(extra: str) -> str:
    """A range as a reader says it: ``0.0<=x<=1.0`` is ``0.0 to 1.0``, ``x>=1`` is ``at least 1``."""
    for pattern, words in ((r"(\S+)<=x<=(\S+)", r"\1 to \2"), (r"x>=(\S+)", r"at least \1"),
                           (r"x<=(\S+)", r"at most \1"), (r"x>(\S+)", r"more than \1"), (r"x<(\S+)", r"less than \1")):
        if re.fullmatch(pattern, extra):
            return re.sub(pattern, words, extra)
    return extra


def _summary(command: TyperCommand | TyperGroup) -> str:
    """A subcommand's line in its group's help: its short help, or the first paragraph of its help, whole."""
    text = command.short_help or textwrap.dedent(command.help or "").strip().split("\n\n")[0]
    return " ".join(text.split())


def _table(rows: list[tuple[str, str]], width: int) -> list[str]:
    """Names in a column, help beside them when there is room, below them otherwise; wrapped at whole words."""
    fitting = [len(names) for names, _ in rows if len(names) <= NAMES_COLUMN]
    column = max(HELP_INDENT, 2 + max(fitting, default=0) + 2)
    if width - column < NARROWEST_HELP:
        column = HELP_INDENT
    lines = []
    for names, text in rows:
        if not text:
            lines.append(f"  {names}")
        elif column > HELP_INDENT and 2 + len(names) + 2 <= column:
            lines += _wrap(text, width, f"  {names}".ljust(column), " " * column)
        else:
            lines += [f"  {names}", *_wrap(text, width, " " * column, " " * column)]
    return lines


def _wrap(text: str, width: int, first: str, rest: str) -> list[str]:
    lines = textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest, break_long_words=False,
                          break_on_hyphens=False) or [first.rstrip()]
    return [line.replace(KEEP_TOGETHER, " ") for line in lines]


def _example(command_line: str, width: int) -> list[str]:
    """One example, continued with `` \\`` on the next lines where it is wider than the terminal (a shell reads it
    as one line)."""
    words = command_line.split(" ")
    lines, line = [], "  "
    for word in words:
        if line.strip() and len(line) + 1 + len(word) + 2 > width:
            lines.append(f"{line} \\")
            line = "      "
        line += ("" if not line.strip() else " ") + word
    return [*lines, line]


def show_usage_error(error: typer.TyperException, prefix: str = "error: ") -> None:
    """Print a usage error as every error of clipseg reads: the usage, where to find help, then ``error: ...``."""
    ctx = getattr(error, "ctx", None)
    message = error.format_message() if hasattr(error, "format_message") else str(error)
    message = message.replace("Value error, ", "")
    if ctx is not None:
        print(f"{ctx.get_usage()}\nTry '{ctx.command_path} -h' for help.\n", file=sys.stderr)
    print(printable(f"{prefix}{message}"), file=sys.stderr)


class _Help:
    """What every command and group of clipseg shares: readable parameters, our usage line, `render_help`."""

    def get_params(self, ctx: typer.Context) -> list:
        return readable(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        return usage_pieces(self, ctx)

    def format_help(self, ctx: typer.Context, formatter: object) -> None:
        formatter.write(render_help(self, ctx))


class Command(_Help, TyperCommand):
    """Every command of clipseg: its help as ``render_help`` writes it."""


class Group(_Help, TyperGroup):
    """clipseg and its groups of commands (``clipseg cache``)."""

