"""`dfs admin keys create|list|revoke`: access keys for the master and the gateway (an admin key is
needed: on the master's host, `--key-file DATA/admin.key`)."""

from __future__ import annotations

import re
import time
from typing import Any

import click
from rich.table import Table

from dfs.cli.admin import AdminCommand, _print_json, json_option, run_admin
from dfs.cli.admin_view import out
from dfs.cli.errors import CliError
from dfs.cli.options import master_option
from dfs.client.admin import AdminClient
from dfs.errors import DfsError

SCOPES = ("ro", "rw", "proxy", "admin")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


class DurationType(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdwy]?)\s*", str(value).lower())
        if not match or float(match[1]) <= 0:
            self.fail(f"not a duration: {value!r} (examples: 30d, 12h, 90m)", param, ctx)
        return float(match[1]) * _UNITS[match[2] or "s"]


class GroupsType(click.ParamType):
    name = "GID,GID..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            return [int(g) for g in str(value).split(",") if g.strip()]
        except ValueError:
            self.fail(f"not a list of group ids: {value!r}", param, ctx)


@click.group("keys", context_settings={"help_option_names": ["-h", "--help"]})
def keys_group() -> None:
    """Access keys: each maps to a uid, gid and groups, with a scope (ro, rw, proxy, admin)."""


@keys_group.command("create", cls=AdminCommand)
@master_option
@click.argument("name")
@click.option("--uid", type=click.IntRange(0, 2**32 - 2), required=True, help="User the key acts as.")
@click.option("--gid", type=click.IntRange(0, 2**32 - 2), required=True, help="Its primary group.")
@click.option("--groups", type=GroupsType(), default="", help="Supplementary groups, e.g. 100,1001.")
@click.option("--scope", type=click.Choice(SCOPES), default="rw", show_default=True,
              help="ro: reads only; rw: files; proxy: a mount or gateway acting for its users; admin: everything.")
@click.option("--expires", type=DurationType(), default=None, help="Lifetime, e.g. 30d or 12h  [default: never]")
@json_option
def create_command(master_url: str, name: str, uid: int, gid: int, groups: list[int], scope: str,
                   expires: float | None, as_json: bool) -> None:
    """Create a key; it is printed once, here, and cannot be shown again."""

    async def body(admin: AdminClient) -> None:
        fields: dict[str, Any] = {"name": name, "uid": uid, "gid": gid, "groups": groups, "scope": scope}
        if expires is not None:
            fields["expires"] = time.time() + expires
        try:
            reply = await admin.call("keys/create", **fields)
        except DfsError as err:
            raise CliError(f"cannot create key '{name}': {err.message}") from None
        if as_json:
            _print_json(reply)
            return
        click.echo(reply["key"])
        click.echo(f"key '{name}' (uid {uid}, gid {gid}, scope {scope}) created; store it now, it is not shown "
                   "again", err=True)

    run_admin(master_url, body)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "never"


@keys_group.command("list", cls=AdminCommand)
@master_option
@json_option
def list_command(master_url: str, as_json: bool) -> None:
    """Names, ids, scopes and expiry of every key (never a secret)."""

    async def body(admin: AdminClient) -> None:
        reply = await admin.call("keys")
        if as_json:
            _print_json(reply)
            return
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("NAME", "KEY ID", "UID", "GID", "GROUPS", "SCOPE", "STATE", "CREATED", "EXPIRES"):
            table.add_column(column)
        for k in reply["keys"]:
            table.add_row(k["name"], k["key_id"], str(k["uid"]), str(k["gid"]),
                          ",".join(str(g) for g in k["groups"]) or "-", k["scope"], k["state"], _when(k["created"]),
                          _when(k["expires"]))
        out.print(table)

    run_admin(master_url, body)


@keys_group.command("revoke", cls=AdminCommand)
@master_option
@click.argument("name")
def revoke_command(master_url: str, name: str) -> None:
    """Revoke a key: the master refuses it from now on."""

    async def body(admin: AdminClient) -> None:
        try:
            await admin.call("keys/revoke", name=name)
        except DfsError as err:
            raise CliError(f"cannot revoke key '{name}': {err.message}") from None
        click.echo(f"key '{name}' revoked")

    run_admin(master_url, body)
