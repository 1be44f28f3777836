"""Click parameter types shared by the commands: sizes and listen addresses."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import click

from dfs.units import parse_listen, parse_size


class SizeType(click.ParamType):
    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class ListenType(click.ParamType):
    name = "HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple:
        if isinstance(value, tuple):
            return value
        try:
            return parse_listen(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class HttpUrlType(click.ParamType):
    """An http(s) URL with a host, without its trailing slash."""

    name = "URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        parts = urlsplit(str(value))
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            self.fail(f"not an http(s) URL such as http://host:9480: {value!r}", param, ctx)
        return str(value).rstrip("/")


SIZE = SizeType()
LISTEN = ListenType()
HTTP_URL = HttpUrlType()

master_option = click.option(
    "--master", "master_url", envvar="DFS_MASTER", default="http://127.0.0.1:9400", show_default=True,
    show_envvar=True, help="URL of the master.",
)
