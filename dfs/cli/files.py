"""File commands: put, get, cat, ls, mkdir, rm, mv, stat — in the manner of coreutils."""

from __future__ import annotations

import asyncio
import errno
import os
import stat as stat_module
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from dfs.cli.errors import CliError, describe, failure, report, run_cli
from dfs.cli.options import current_key, master_option
from dfs.client import Client
from dfs.errors import DfsError
from dfs.protocol import MAX_GOAL, Attr
from dfs.units import MiB

T = TypeVar("T")
READ_SIZE = 4 * MiB
PROGRESS_THRESHOLD = 64 * MiB  # smaller transfers finish before a bar would help


def remote(path: str) -> str:
    """Remote paths are absolute; "a/b" means "/a/b"."""
    return path if path.startswith("/") else "/" + path


def with_client(master_url: str, body: Callable[[Client], Awaitable[int | None]]) -> None:
    """Run `body` with a started client, turning every user error into one line and an exit code."""

    async def main() -> int | None:
        async with Client(master_url, retry_for=10.0, key=current_key()) as client:
            return await body(client)

    run_cli(lambda: asyncio.run(main()))


class Transfer(AbstractContextManager):
    """A rich progress bar on stderr for transfers large enough to need one."""

    def __init__(self, label: str, total: int | None, enabled: bool) -> None:
        self.enabled = enabled and (total is None or total >= PROGRESS_THRESHOLD)
        self.progress = Progress(
            "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), console=Console(stderr=True), transient=False,
        )
        self.label = label
        self.total = total
        self.task: TaskID | None = None

    def __enter__(self) -> Transfer:
        if self.enabled:
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=self.total)
        return self

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()


async def read_local(f: BinaryIO, transfer: Transfer) -> AsyncIterator[bytes]:
    while True:
        data = await asyncio.to_thread(f.read, READ_SIZE)
        if not data:
            return
        transfer.advance(len(data))
        yield data


progress_option = click.option("--progress/--no-progress", default=None,
                                help="Show a progress bar  [default: when stderr is a terminal]")


def _show_progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


@click.command("put")
@master_option
@click.option("--goal", type=click.IntRange(1, MAX_GOAL), default=None, help="Replicas of each chunk.")
@progress_option
@click.argument("local")
@click.argument("remote_path", metavar="REMOTE")
def put_command(master_url: str, goal: int | None, progress: bool | None, local: str, remote_path: str) -> None:
    """Upload LOCAL (a file, or - for stdin) to REMOTE (a path, or an existing folder)."""

    async def body(client: Client) -> None:
        target = remote(remote_path)
        try:
            if (await client.stat(target)).is_dir:
                name = "stdin" if local == "-" else Path(local).name
                target = target.rstrip("/") + "/" + name
        except DfsError as err:
            if err.errno not in (errno.ENOENT,):
                raise failure("stat", target, err) from None
        try:
            source = sys.stdin.buffer if local == "-" else open(local, "rb")  # noqa: SIM115
        except OSError as err:
            raise failure("open", local, err) from None
        with source:
            size = None if local == "-" else os.fstat(source.fileno()).st_size
            with Transfer(f"put {Path(local).name}", size, _show_progress(progress)) as transfer:
                try:
                    await client.upload(target, read_local(source, transfer), goal=goal)
                except DfsError as err:
                    raise failure("upload to", target, err) from None

    with_client(master_url, body)


@click.command("get")
@master_option
@progress_option
@click.argument("remote_path", metavar="REMOTE")
@click.argument("local")
def get_command(master_url: str, progress: bool | None, remote_path: str, local: str) -> None:
    """Download REMOTE to LOCAL (a file, an existing folder, or - for stdout)."""

    async def body(client: Client) -> None:
        source = remote(remote_path)
        try:
            attr = await client.stat(source)
        except DfsError as err:
            raise failure("stat", source, err) from None
        if attr.is_dir:
            raise CliError(f"cannot download '{source}': Is a directory")
        target = Path(local)
        if local != "-" and target.is_dir():
            target = target / Path(source).name
        try:
            out = sys.stdout.buffer if local == "-" else open(target, "wb")  # noqa: SIM115
        except OSError as err:
            raise failure("create", str(target), err) from None
        ctx = nullcontext(out) if local == "-" else out
        with ctx, Transfer(f"get {Path(source).name}", attr.size, _show_progress(progress)) as transfer:
            try:
                async for piece in client.download(source):
                    out.write(piece)
                    transfer.advance(len(piece))
            except DfsError as err:
                raise failure("download", source, err) from None

    with_client(master_url, body)


@click.command("cat")
@master_option
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
def cat_command(master_url: str, paths: tuple[str, ...]) -> None:
    """Write the contents of files to stdout."""

    async def body(client: Client) -> int:
        status = 0
        out = sys.stdout.buffer
        for path in map(remote, paths):
            try:
                async for piece in client.download(path):
                    out.write(piece)
            except DfsError as err:
                report(f"{path}: {describe(err)}")
                status = 1
        out.flush()
        return status

    with_client(master_url, body)


def _long_line(name: str, attr: Attr) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(attr.mtime_ns / 1e9))
    return (f"{stat_module.filemode(attr.mode)} {attr.nlink:>3} {attr.uid:>5} {attr.gid:>5} "
            f"{attr.size:>12} {when} {name}")


@click.command("ls")
@master_option
@click.option("-l", "long", is_flag=True, help="Long listing: mode, links, owner, size, time.")
@click.option("-R", "recursive", is_flag=True, help="List subfolders recursively.")
@click.argument("paths", nargs=-1, metavar="[PATH]...")
def ls_command(master_url: str, long: bool, recursive: bool, paths: tuple[str, ...]) -> None:
    """List folder contents (default: /)."""

    async def listing(client: Client, path: str, header: bool) -> int:
        try:
            attr = await client.stat(path)
            if not attr.is_dir:
                click.echo(_long_line(path, attr) if long else path)
                return 0
            entries = [item async for item in client.listdir(path)]
        except DfsError as err:
            report(f"cannot access '{path}': {describe(err)}")
            return 2 if err.errno == errno.ENOENT else 1
        if header:
            click.echo(f"{path}:")
        for name, child in entries:
            click.echo(_long_line(name, child) if long else name)
        status = 0
        if recursive:
            for name, child in entries:
                if child.is_dir:
                    click.echo("")
                    status = max(status, await listing(client, path.rstrip("/") + "/" + name, True))
        return status

    async def body(client: Client) -> int:
        targets = [remote(p) for p in paths] or ["/"]
        status = 0
        for i, path in enumerate(targets):
            if i:
                click.echo("")
            status = max(status, await listing(client, path, recursive or len(targets) > 1))
        return status

    with_client(master_url, body)


@click.command("mkdir")
@master_option
@click.option("-p", "parents", is_flag=True, help="Make parent folders as needed; no error if existing.")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
def mkdir_command(master_url: str, parents: bool, paths: tuple[str, ...]) -> None:
    """Create folders."""

    async def body(client: Client) -> int:
        return await each(paths, "create directory", lambda p: client.makedir(p, parents=parents))

    with_client(master_url, body)


@click.command("rm")
@master_option
@click.option("-r", "-R", "recursive", is_flag=True, help="Remove folders and their contents.")
@click.option("-f", "force", is_flag=True, help="Ignore missing files.")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
def rm_command(master_url: str, recursive: bool, force: bool, paths: tuple[str, ...]) -> None:
    """Remove files (and folders with -r)."""

    async def remove(client: Client, path: str) -> None:
        if not recursive and (await client.stat(path, follow=False)).is_dir:
            raise DfsError(errno.EISDIR, "Is a directory")
        await client.remove(path, recursive=recursive)

    async def body(client: Client) -> int:
        ignore = {errno.ENOENT} if force else set()
        return await each(paths, "remove", lambda p: remove(client, p), ignore=ignore)

    with_client(master_url, body)


@click.command("mv")
@master_option
@click.argument("source")
@click.argument("dest")
def mv_command(master_url: str, source: str, dest: str) -> None:
    """Rename SOURCE to DEST, or move it into DEST when DEST is a folder."""

    async def body(client: Client) -> None:
        src, dst = remote(source), remote(dest)
        try:
            if (await client.stat(dst)).is_dir:
                dst = dst.rstrip("/") + "/" + src.rstrip("/").rsplit("/", 1)[-1]
        except DfsError as err:
            if err.errno != errno.ENOENT:
                raise failure("stat", dst, err) from None
        try:
            await client.rename(src, dst)
        except DfsError as err:
            raise CliError(f"cannot move '{src}' to '{dst}': {describe(err)}") from None

    with_client(master_url, body)


@click.command("stat")
@master_option
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
def stat_command(master_url: str, paths: tuple[str, ...]) -> None:
    """Show the attributes of files and folders."""

    def stamp(ns: int) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns // 10**9)) + f".{ns % 10**9:09d}"

    async def show(client: Client, path: str) -> None:
        a = await client.stat(path, follow=False)
        lines = [
            f"  File: {path}" + (f" -> {await client.readlink(path)}" if a.is_symlink else ""),
            f"  Size: {a.size:<12} Type: {a.kind:<10} Goal: {a.goal}",
            f" Inode: {a.inode:<12} Links: {a.nlink}",
            f"Access: ({stat_module.S_IMODE(a.mode):04o}/{stat_module.filemode(a.mode)})  Uid: {a.uid}  Gid: {a.gid}",
            f"Access: {stamp(a.atime_ns)}",
            f"Modify: {stamp(a.mtime_ns)}",
            f"Change: {stamp(a.ctime_ns)}",
        ]
        click.echo("\n".join(lines))

    async def body(client: Client) -> int:
        return await each(paths, "stat", lambda p: show(client, p))

    with_client(master_url, body)


async def each(paths: tuple[str, ...], action: str, op: Callable[[str], Awaitable[Any]],
               ignore: set[int] | None = None) -> int:
    """Apply `op` to every path, reporting failures one per line; 1 if any failed."""
    status = 0
    for path in map(remote, paths):
        try:
            await op(path)
        except DfsError as err:
            if ignore and err.errno in ignore:
                continue
            report(str(failure(action, path, err)))
            status = 1
    return status


FILE_COMMANDS = [put_command, get_command, cat_command, ls_command, mkdir_command, rm_command, mv_command,
                 stat_command]
