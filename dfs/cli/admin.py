"""`dfs admin`: status, nodes, df, balance, decommission, recommission, fsck, setrep, info.

Each command asks the master (`/api/admin/...`, dfs/client/admin.py) and shows the answer as text and
rich tables (dfs/cli/admin_view.py), or as JSON with `--json`. Long jobs (balance, decommission) run in
the master; these commands start them and watch them by polling, with a progress bar on a terminal.

Exit codes: 0 success; 1 failure or, for fsck, problems found; 2 bad usage (one line, no usage dump);
130 interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from dfs.cli import admin_view as view
from dfs.cli.errors import CliError, describe, report, run_cli
from dfs.cli.options import current_key, master_option
from dfs.client.admin import AdminClient
from dfs.errors import DfsError
from dfs.protocol import MAX_GOAL
from dfs.units import parse_size

POLL = 0.5
INTERRUPTED = 130


class AdminCommand(click.Command):
    """Usage errors as one line ("dfs: admin balance: Invalid value for '--threshold': ...") and exit 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            report(f"admin {self.name}: {exc.format_message()}")
            sys.exit(2)


class RateType(click.ParamType):
    name = "RATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        text = text[:-2] if text.lower().endswith("/s") else text
        try:
            rate = parse_size(text)
        except ValueError:
            self.fail(f"not a rate: {value!r} (examples: 50MiB, 100M/s)", param, ctx)
        if rate <= 0:
            self.fail("must be more than zero", param, ctx)
        return rate


json_option = click.option("--json", "as_json", is_flag=True, help="Print the master's answer as JSON.")
progress_option = click.option("--progress/--no-progress", default=None,
                               help="Show a progress bar  [default: when stderr is a terminal]")


def _progress_wanted(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def run_admin(master_url: str, body: Callable[[AdminClient], Awaitable[int | None]]) -> None:
    async def main() -> int | None:
        async with AdminClient(master_url, key=current_key()) as admin:
            return await body(admin)

    run_cli(lambda: asyncio.run(main()))


def _cannot(action: str, what: str, err: DfsError) -> CliError:
    """A failure about a path: "cannot check '/x': No such file or directory"."""
    return CliError(f"cannot {action} '{what}': {describe(err)}")


def _node_error(action: str, node: str, err: DfsError) -> CliError:
    """A failure about a node: the master's message names it ("no such node: ...")."""
    return CliError(f"cannot {action} {node}: {err.message}")


class Interrupts:
    """SIGINT as a flag the watch loops poll (the first asks the job to stop, a second leaves at once)."""

    def __init__(self) -> None:
        self.count = 0
        self.event = asyncio.Event()

    def __enter__(self) -> Interrupts:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self._hit)
        return self

    def _hit(self) -> None:
        self.count += 1
        self.event.set()
        if self.count > 1:
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)

    async def sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), seconds)
        self.event.clear()


def _bar(enabled: bool) -> Progress | None:
    if not enabled:
        return None
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TextColumn("{task.fields[extra]}"),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True))


@click.group("admin", context_settings={"help_option_names": ["-h", "--help"]})
def admin_group() -> None:
    """Administer the cluster: health, nodes, balancing, decommissioning, fsck, goals."""


# -- status, nodes, df ----------------------------------------------------------------------------------

@admin_group.command("status", cls=AdminCommand)
@master_option
@json_option
def status_command(master_url: str, as_json: bool) -> None:
    """Cluster health: nodes, capacity, chunks by state."""

    async def body(admin: AdminClient) -> None:
        reply = await admin.call("status")
        _print_json(reply) if as_json else view.show_status(reply)

    run_admin(master_url, body)


@admin_group.command("nodes", cls=AdminCommand)
@master_option
@json_option
def nodes_command(master_url: str, as_json: bool) -> None:
    """The chunkservers: address, state, capacity, use, chunk count, last heartbeat."""

    async def body(admin: AdminClient) -> None:
        reply = await admin.call("nodes")
        _print_json(reply) if as_json else view.show_nodes(reply["nodes"])

    run_admin(master_url, body)


@admin_group.command("df", cls=AdminCommand)
@master_option
@json_option
def df_command(master_url: str, as_json: bool) -> None:
    """Raw space per node and in total, and the file data it holds."""

    async def body(admin: AdminClient) -> None:
        reply = await admin.call("df")
        _print_json(reply) if as_json else view.show_df(reply)

    run_admin(master_url, body)


# -- balance --------------------------------------------------------------------------------------------

async def _node_names(admin: AdminClient) -> dict[int, dict[str, Any]]:
    return {n["id"]: n for n in (await admin.call("nodes"))["nodes"]}


@admin_group.command("balance", cls=AdminCommand)
@master_option
@click.option("--threshold", type=click.FloatRange(0, 100, min_open=True), default=10.0, show_default=True,
              metavar="PCT", help="Allowed distance of each node's utilisation from the mean, in percentage points.")
@click.option("--max-bandwidth", type=RateType(), default=None, help="Cap on bytes copied per second, e.g. 50MiB.")
@click.option("--max-moves", type=click.IntRange(min=1), default=None, metavar="N", help="Stop after N moves.")
@click.option("--dry-run", is_flag=True, help="Print the plan (what moves where and why); change nothing.")
@click.option("--stop", is_flag=True, help="Stop a running balance (moves in flight finish) and exit.")
@json_option
@progress_option
def balance_command(master_url: str, threshold: float, max_bandwidth: int | None, max_moves: int | None,
                    dry_run: bool, stop: bool, as_json: bool, progress: bool | None) -> None:
    """Move replicas until every node's utilisation is within the threshold of the mean (HDFS balancer).

    The balancing runs in the master; this command starts and watches it. Ctrl-C stops it cleanly
    (nothing is left half-moved); running the command again continues.
    """
    limits: dict[str, Any] = {"threshold": threshold}
    if max_moves is not None:
        limits["max_moves"] = max_moves

    async def body(admin: AdminClient) -> int:
        if stop:
            st = await admin.call("balance/stop")
            _print_json(st) if as_json else click.echo(f"balance {st['state']}: {st.get('message', '')}")
            return 0
        if dry_run:
            plan = await admin.call("balance/plan", **limits)
            _print_json(plan) if as_json else view.show_plan(plan, await _node_names(admin))
            return 0
        try:
            await admin.call("balance/start", **limits, max_bandwidth=max_bandwidth)
        except DfsError as err:
            if err.errno != errno.EBUSY:
                raise CliError(f"cannot start the balance: {describe(err)}") from None
            report("a balance is already running: watching it")
        return await _watch_balance(admin, as_json, _progress_wanted(progress) and not as_json)

    run_admin(master_url, body)


async def _watch_balance(admin: AdminClient, as_json: bool, show_bar: bool) -> int:
    bar = _bar(show_bar)
    task = None
    interrupted = False
    with Interrupts() as sigint:
        if bar is not None:
            bar.start()
            task = bar.add_task("balance", total=None, extra="")
        try:
            while True:
                st = await admin.call("balance")
                if bar is not None and task is not None:
                    extra = f"{st['moves_done']}/{st['moves_planned']} moves"
                    bar.update(task, total=st["bytes_planned"] or None, completed=st["bytes_moved"], extra=extra)
                if st["state"] not in ("running", "stopping"):
                    break
                if sigint.count and not interrupted:
                    interrupted = True
                    st = await admin.call("balance/stop")
                    report(f"stopping the balance: {len(st.get('in_flight') or [])} moves in flight finish first")
                await sigint.sleep(POLL)
        finally:
            if bar is not None:
                bar.stop()
    if as_json:
        _print_json(st)
    else:
        click.echo(view.balance_summary(st))
        if interrupted:
            click.echo("  run `dfs admin balance` again to continue")
    if st["state"] == "failed":
        return 1
    return INTERRUPTED if interrupted else 0


# -- decommission ---------------------------------------------------------------------------------------

@admin_group.command("decommission", cls=AdminCommand)
@master_option
@click.argument("node")
@click.option("--force", is_flag=True, help="Drain even if the other nodes cannot hold every goal.")
@click.option("--cancel", is_flag=True, help="Stop draining NODE and put it back in service.")
@click.option("--no-wait", is_flag=True, help="Start the drain and exit without watching it.")
@json_option
@progress_option
def decommission_command(master_url: str, node: str, force: bool, cancel: bool, no_wait: bool, as_json: bool,
                         progress: bool | None) -> None:
    """Drain every replica off NODE (server id, URL or host:port), then retire it.

    Redundancy never drops: each replica is copied elsewhere before the node's copy goes. The drain
    runs in the master; Ctrl-C only stops watching it.
    """

    async def body(admin: AdminClient) -> int:
        if cancel:
            try:
                st = await admin.call("decommission/cancel", node=node)
            except DfsError as err:
                raise _node_error("cancel the decommission of", node, err) from None
            _print_json(st) if as_json else click.echo(f"decommission of server {st['server_id']} ({st['url']}) "
                                                       "cancelled: it is in service again")
            return 0
        try:
            st = await admin.call("decommission", node=node, force=force)
        except DfsError as err:
            raise _node_error("decommission", node, err) from None
        if no_wait:
            _print_json(st) if as_json else click.echo(
                f"server {st['server_id']} ({st['url']}) is draining: {st['replicas_left']} replicas to move")
            return 0
        return await _watch_drain(admin, st["server_id"], as_json, _progress_wanted(progress) and not as_json)

    run_admin(master_url, body)


async def _watch_drain(admin: AdminClient, server_id: int, as_json: bool, show_bar: bool) -> int:
    bar = _bar(show_bar)
    task = None
    started = time.monotonic()
    with Interrupts() as sigint:
        if bar is not None:
            bar.start()
            task = bar.add_task(f"drain {server_id}", total=None, extra="")
        try:
            while True:
                nodes = (await admin.call("decommission/status"))["nodes"]
                st = next((n for n in nodes if n["server_id"] == server_id), None)
                if st is None:
                    raise CliError(f"server {server_id} is no longer being decommissioned (cancelled?)")
                if bar is not None and task is not None:
                    total = st.get("initial_bytes") or None
                    done = max(0, (st.get("initial_bytes") or 0) - st["bytes_left"])
                    bar.update(task, total=total, completed=done, extra=f"{st['replicas_left']} replicas left")
                if st["state"] == "decommissioned":
                    break
                if sigint.count:
                    if bar is not None:
                        bar.stop()
                        bar = None
                    report(f"stopped watching; server {server_id} goes on draining in the master "
                           f"(`dfs admin decommission --cancel {server_id}` stops it)")
                    return INTERRUPTED
                await sigint.sleep(POLL)
        finally:
            if bar is not None:
                bar.stop()
    if as_json:
        _print_json(st)
    else:
        click.echo(f"server {server_id} ({st['url']}) decommissioned: {st.get('moved', 0)} replicas moved "
                   f"({view.size(st.get('moved_bytes', 0))}), {st.get('dropped', 0)} dropped, in "
                   f"{time.monotonic() - started:.1f} s")
    return 0


@admin_group.command("recommission", cls=AdminCommand)
@master_option
@click.argument("node")
@json_option
def recommission_command(master_url: str, node: str, as_json: bool) -> None:
    """Put a draining or decommissioned NODE back in service."""

    async def body(admin: AdminClient) -> None:
        try:
            st = await admin.call("recommission", node=node)
        except DfsError as err:
            raise _node_error("recommission", node, err) from None
        _print_json(st) if as_json else click.echo(f"server {st['server_id']} ({st['url']}) is in service again")

    run_admin(master_url, body)


# -- fsck, setrep, info ---------------------------------------------------------------------------------

def _remote(path: str) -> str:
    return path if path.startswith("/") else "/" + path


@admin_group.command("fsck", cls=AdminCommand)
@master_option
@click.argument("path", default="/")
@click.option("--repair", is_flag=True, help="Fix what can be fixed and say what cannot.")
@click.option("--no-verify", is_flag=True, help="Do not read replicas to check their checksums.")
@json_option
def fsck_command(master_url: str, path: str, repair: bool, no_verify: bool, as_json: bool) -> None:
    """Check the files under PATH: missing, under-replicated, corrupt, stale and orphaned chunks.

    Exits 1 when a problem is found (or, with --repair, is left).
    """

    async def body(admin: AdminClient) -> int:
        target = _remote(path)
        try:
            reply = await admin.call("fsck", path=target, repair=repair, verify=not no_verify)
        except DfsError as err:
            raise _cannot("check", target, err) from None
        _print_json(reply) if as_json else view.show_fsck(reply)
        return 0 if reply["healthy"] else 1

    run_admin(master_url, body)


@admin_group.command("setrep", cls=AdminCommand)
@master_option
@click.argument("goal", type=click.IntRange(1, MAX_GOAL))
@click.argument("path")
@click.option("-R", "recursive", is_flag=True, help="Change every file and folder below PATH too.")
@click.option("--wait", is_flag=True, help="Wait until every chunk has exactly GOAL replicas.")
@json_option
@progress_option
def setrep_command(master_url: str, goal: int, path: str, recursive: bool, wait: bool, as_json: bool,
                   progress: bool | None) -> None:
    """Set the replication goal of PATH (and, with -R, of everything below it)."""

    async def body(admin: AdminClient) -> int:
        target = _remote(path)
        try:
            reply = await admin.call("setrep", path=target, goal=goal, recursive=recursive)
        except DfsError as err:
            raise _cannot("set the goal of", target, err) from None
        if reply.get("warning"):
            report(f"warning: {reply['warning']}")
        if not as_json:
            click.echo(f"goal of '{target}' set to {goal}: {reply['files']} files, {reply['folders']} folders")
        if not wait:
            if as_json:
                _print_json(reply)
            return 0
        return await _wait_goal(admin, target, recursive, as_json, _progress_wanted(progress) and not as_json)

    run_admin(master_url, body)


async def _wait_goal(admin: AdminClient, path: str, recursive: bool, as_json: bool, show_bar: bool) -> int:
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} chunks"),
                   console=Console(stderr=True)) if show_bar else None
    task = bar.add_task("setrep", total=None) if bar is not None else None
    if bar is not None:
        bar.start()
    try:
        with Interrupts() as sigint:
            while True:
                st = await admin.call("setrep/progress", path=path, recursive=recursive)
                if bar is not None and task is not None:
                    bar.update(task, total=st["chunks"], completed=st["at_goal"])
                if st["done"] or (st["pending"] == 0 and st["blocked"]):
                    break
                if sigint.count:
                    report("stopped waiting; the master goes on with the copies")
                    return INTERRUPTED
                await sigint.sleep(POLL)
    finally:
        if bar is not None:
            bar.stop()
    if as_json:
        _print_json(st)
    if not st["done"]:
        why = next(iter(st["blocked"].values()), "unknown")
        raise CliError(f"{st['under']} chunks under '{path}' cannot reach their goal: {why}")
    if not as_json:
        click.echo(f"all {st['chunks']} chunks under '{path}' are at their goal")
    return 0


@admin_group.command("info", cls=AdminCommand)
@master_option
@click.argument("path")
@json_option
def info_command(master_url: str, path: str, as_json: bool) -> None:
    """One file's chunks, versions and replicas with their servers and checksums (as mfsfileinfo)."""

    async def body(admin: AdminClient) -> None:
        target = _remote(path)
        try:
            reply = await admin.call("info", path=target)
        except DfsError as err:
            raise CliError(f"cannot access '{target}': {describe(err)}") from None
        _print_json(reply) if as_json else view.show_info(reply)

    run_admin(master_url, body)


# -- join-token -----------------------------------------------------------------------------------------

@admin_group.command("join-token")
@click.option("--data", "data_dir", envvar="DFS_DATA", default=None, show_envvar=True,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="The master's data folder (holding cluster.secret).")
@click.option("--secret-file", envvar="DFS_SECRET_FILE", default=None, show_envvar=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path), help="The cluster secret file.")
def join_token_command(data_dir: Path | None, secret_file: Path | None) -> None:
    """Print the join token chunkservers need (`dfs chunkserver --join-token`), from the cluster secret.

    Run it on the master's machine; keep the token as secret as the secret (it lets a server join)."""
    from dfs.tokens import SECRET_FILE, SecretError, join_token, read_secret_file

    if (data_dir is None) == (secret_file is None):
        raise click.UsageError("give the master's --data folder or the --secret-file")
    try:
        secret = read_secret_file(secret_file or data_dir / SECRET_FILE)  # type: ignore[operator]
    except SecretError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(join_token(secret))
