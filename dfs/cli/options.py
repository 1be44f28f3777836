"""Click parameter types and options shared by the commands: sizes, listen addresses, master, TLS."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click

from dfs import tls
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

master_url_option = click.option(
    "--master", "master_url", envvar="DFS_MASTER", default="http://127.0.0.1:9400", show_default=True,
    show_envvar=True, help="URL of the master (https:// when the cluster runs TLS).",
)


def _set_ca(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    tls.set_default_ca(value)
    return value


#: Every command that talks to the cluster verifies its TLS certificates with this CA (the process default).
tls_ca_option = click.option(
    "--tls-ca", envvar=tls.CA_ENV, show_envvar=True, default=None, expose_value=False, callback=_set_ca,
    is_eager=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="CA certificate that signed the cluster's TLS certificates [default: the system's].",
)


def tls_server_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--tls-cert and --tls-key: serve HTTPS."""
    f = click.option("--tls-key", envvar="DFS_TLS_KEY", show_envvar=True, default=None,
                     type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     help="Private key of --tls-cert (PEM).")(f)
    return click.option("--tls-cert", envvar="DFS_TLS_CERT", show_envvar=True, default=None,
                        type=click.Path(dir_okay=False, exists=True, path_type=Path),
                        help="Serve HTTPS with this certificate chain (PEM); needs --tls-key.")(f)


def check_tls_pair(cert: Path | None, key: Path | None) -> None:
    if (cert is None) != (key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")


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
    """--master, --tls-ca to verify it (and every other server of the cluster) with, and the access key to
    call it with (--key, --key-file): read with `current_key()`."""
    return master_url_option(tls_ca_option(_key_option(_key_file_option(command))))


def current_key() -> str:
    """The access key the running command was given ("" for none)."""
    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    try:
        return find_key(meta.get("dfs.key"), meta.get("dfs.key_file")) or ""
    except DfsError as err:
        raise click.UsageError(err.message) from None
