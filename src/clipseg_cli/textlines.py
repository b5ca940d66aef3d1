"""Lines of text as we read and write them: a line ends at ``\\n``, ``\\r\\n`` or ``\\r`` only.

``str.splitlines`` also ends lines at U+2028, U+2029, U+0085, vertical tab, form feed and more,
which would split a prompt holding one of them; and JSON keeps U+2028, U+2029 and U+0085 raw, so
that a reader splitting at them loses the record. We split at the three line ends alone and write
those characters escaped.
"""

from __future__ import annotations

import json
import re

_LINE_END = re.compile(r"\r\n|\r|\n")
_ESCAPED = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"}


def split_lines(text: str) -> list[str]:
    """Returns: the lines of ``text`` without their ends (no empty last line after a final line end)."""
    lines = _LINE_END.split(text)
    return lines[:-1] if lines and lines[-1] == "" else lines


def json_text(value: object) -> str:
    """Returns: ``value`` as JSON on one line, UTF-8 characters kept except the line separators (escaped)."""
    text = json.dumps(value, ensure_ascii=False)
    for raw, escaped in _ESCAPED.items():  # only inside strings, where the escape means the same
        text = text.replace(raw, escaped)
    return text
