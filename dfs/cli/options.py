"""Click parameter types and options shared by the commands: sizes, listen addresses, master, TLS."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from dfs import tls
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

_master_url_option = click.option(
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


def master_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """--master URL, and --tls-ca to verify it (and every other server of the cluster) with."""
    return _master_url_option(tls_ca_option(f))


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
