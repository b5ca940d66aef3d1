"""What the server reads of a request besides its image: form fields as strict UTF-8, and Accept's q-values.

Starlette reads a multipart field that is not valid UTF-8 as Latin-1 (``\\xff\\xfe car`` becomes
``ÿþ car``); the CLI refuses such a prompt, so the server does too: `Utf8Route` answers 422.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import aclosing

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser


class NotUtf8(HTTPException):
    """A form field (a prompt, an option) whose bytes are not UTF-8: 422."""

    def __init__(self, field: str) -> None:
        super().__init__(422, f"{field}: not UTF-8 text; send prompts and options as UTF-8")


class _Utf8Parser(MultiPartParser):
    """Starlette's multipart parser, refusing a text field that is not UTF-8 instead of reading it as Latin-1."""

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                bytes(part.data).decode("utf-8")
            except UnicodeDecodeError:
                raise NotUtf8(part.field_name) from None
        super().on_part_end()


class _Utf8Request(Request):
    async def _get_form(self, *, max_files: int | float = 1000, max_fields: int | float = 1000,
                        max_part_size: int = 1024 * 1024) -> FormData:
        if self._form is None and self.headers.get("content-type", "").startswith("multipart/form-data"):
            async with aclosing(self.stream()) as stream:
                parser = _Utf8Parser(self.headers, stream, max_files=max_files, max_fields=max_fields,
                                     max_part_size=max_part_size)
                self._form = await parser.parse()
        return await super()._get_form(max_files=max_files, max_fields=max_fields, max_part_size=max_part_size)


class Utf8Route(APIRoute):
    """A FastAPI route whose multipart form fields must be UTF-8 (422 otherwise)."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def utf8_handler(request: Request) -> Response:
            return await handler(_Utf8Request(request.scope, request.receive))

        return utf8_handler


def accepted(accept: str | None, media_type: str) -> tuple[float, bool]:
    """How much an Accept header takes ``media_type``: the q-value of its most specific matching range.

    Arguments:
        accept: the header (None or empty: everything, q=1).

    Returns:
        (q in [0, 1], whether the type is named itself rather than by a wildcard).
    """
    if not accept or not accept.strip():
        return 1.0, False
    kind = media_type.split("/")[0]
    best, rank = 0.0, -1  # rank: 0 */*, 1 type/*, 2 the type itself
    for entry in accept.split(","):
        name, *parameters = (part.strip() for part in entry.split(";"))
        name = name.lower()
        matched = {"*/*": 0, f"{kind}/*": 1, media_type: 2}.get(name)
        if matched is None or matched < rank:
            continue
        q = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value)))
                except ValueError:
                    q = 0.0
        best, rank = (q, matched) if matched > rank else (max(best, q), rank)
    return best, rank == 2
