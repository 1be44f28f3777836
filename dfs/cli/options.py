"""Click parameter types shared by the commands: sizes and listen addresses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from dfs.auth import KEY_ENV, KEY_FILE_ENV, find_key
from dfs.errors import DfsError
from dfs.units import parse_listen, parse_size

F = TypeVar("F", bound=Callable[..., Any])


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


SIZE = SizeType()
LISTEN = ListenType()

master_url_option = click.option(
    "--master", "master_url", envvar="DFS_MASTER", default="http://127.0.0.1:9400", show_default=True,
    show_envvar=True, help="URL of the master.",
)


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value:
        ctx.meta[f"dfs.{param.name}"] = value
    return value


# No click envvar: dfs.auth.find_key reads them after the flags, so --key-file beats $DFS_KEY.
_key_option = click.option("--key", expose_value=False, callback=_remember,
                           help=f"Access key (dfs_...) to send to the master  [env var: {KEY_ENV}]")
_key_file_option = click.option("--key-file", expose_value=False, callback=_remember, type=click.Path(dir_okay=False),
                                help="File holding the access key, e.g. DATA/admin.key on the master's host  "
                                     f"[env var: {KEY_FILE_ENV}]")


def master_option(command: F) -> F:
    """--master, and the access key to call it with (--key, --key-file): read with `current_key()`."""
    return master_url_option(_key_option(_key_file_option(command)))


def current_key() -> str:
    """The access key the running command was given ("" for none)."""
    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    try:
        return find_key(meta.get("dfs.key"), meta.get("dfs.key_file")) or ""
    except DfsError as err:
        raise click.UsageError(err.message) from None
