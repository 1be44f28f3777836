"""Concurrent namespace changes from separate clients: one winner per name, a consistent tree, no 5xx.

On SQLite the master runs one transaction at a time; on PostgreSQL (DFS_TEST_DB=postgresql) they
overlap under SERIALIZABLE isolation and serialisation failures are run again. Every test ends with
`check_namespace`, which reads the master's database directly.
"""

from __future__ import annotations

import asyncio
import errno
import random
import stat
from collections import Counter
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from dfs.client.client import Client
from dfs.errors import DfsError
from dfs.master.config import MasterConfig
from dfs.master.db import Database
from dfs.master.leases import LeaseTable
from dfs.master.namespace import Namespace
from dfs.master.servers import Registry
from dfs.protocol import ROOT_INODE
from tests.harness import Cluster
from tests.pgserver import backend, fresh_database_url, sync_url

CLIENTS = 12


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A master alone: namespace operations need no chunkserver."""
    cluster = Cluster(root=tmp_path_factory.mktemp("concurrency"))
    try:
        cluster.start(chunkservers=0, gateway=False)
        yield cluster
    finally:
        cluster.stop()


def check_namespace(where: Cluster | str) -> list[str]:
    """Every inode reachable exactly once from the root, link counts right; a list of problems."""
    engine = create_engine(sync_url(where if isinstance(where, str) else where.database_url))
    try:
        with engine.connect() as db:
            inodes = {r[0]: (r[1], r[2]) for r in db.execute(text("SELECT id, mode, nlink FROM inodes"))}
            entries = db.execute(text("SELECT parent, inode FROM dentries")).all()
    finally:
        engine.dispose()
    problems = []
    names = Counter(inode for _, inode in entries)
    subdirs = Counter(parent for parent, inode in entries if inode in inodes and stat.S_ISDIR(inodes[inode][0]))
    children: dict[int, list[int]] = {}
    for parent, inode in entries:
        if inode not in inodes:
            problems.append(f"entry in {parent} names missing inode {inode}")
        if parent not in inodes or not stat.S_ISDIR(inodes[parent][0]):
            problems.append(f"entry for inode {inode} lives in {parent}, not a directory")
        children.setdefault(parent, []).append(inode)
    for inode, (mode, nlink) in inodes.items():
        if stat.S_ISDIR(mode):
            if names[inode] != (0 if inode == ROOT_INODE else 1):
                problems.append(f"directory {inode} has {names[inode]} names")
            if nlink != 2 + subdirs[inode]:
                problems.append(f"directory {inode} nlink {nlink}, has {subdirs[inode]} subdirectories")
        elif nlink != names[inode] or nlink == 0:
            problems.append(f"file {inode} nlink {nlink}, has {names[inode]} names")
    seen: set[int] = set()
    todo = [ROOT_INODE]
    while todo:  # each directory has one name, so the walk visits each at most once unless there is a cycle
        current = todo.pop()
        if current in seen:
            problems.append(f"inode {current} reached twice (a cycle)")
            continue
        seen.add(current)
        todo += [c for c in children.get(current, []) if c in inodes and stat.S_ISDIR(inodes[c][0])]
    dirs = {i for i, (mode, _) in inodes.items() if stat.S_ISDIR(mode)}
    problems += [f"directory {i} not reachable from the root" for i in sorted(dirs - seen)]
    return problems


async def clients(cluster: Cluster, count: int = CLIENTS) -> list[Client]:
    """Separate clients: each its own HTTP session, as separate machines would be."""
    return [await Client(cluster.master_url, retry_for=5.0).start() for _ in range(count)]


async def race(calls: list[Awaitable[Any]]) -> tuple[list[Any], list[DfsError]]:
    """Run every call at once: (results, DfsErrors); anything else fails the test."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert all(isinstance(e, DfsError) for e in errors), errors
    for err in errors:
        assert err.status < 500, f"{err.code}: {err.message}"  # a conflict is never a server error
    return [o for o in outcomes if not isinstance(o, BaseException)], errors  # type: ignore[misc]


async def close(all_clients: list[Client]) -> None:
    await asyncio.gather(*(c.close() for c in all_clients))


async def test_one_create_of_a_name_wins(master: Cluster) -> None:
    cs = await clients(master)
    try:
        folder = await cs[0].makedir("/creates")
        for round_ in range(6):
            name = f"f{round_}"
            if round_ % 2:
                calls = [c.mkdir(folder.inode, name) for c in cs]
            else:
                calls = [c.create(folder.inode, name, exclusive=True) for c in cs]
            won, lost = await race(calls)
            assert len(won) == 1, f"round {round_}: {len(won)} creators of {name!r} succeeded"
            assert {e.errno for e in lost} == {errno.EEXIST}
        names = [n async for n, _ in cs[0].readdir(folder.inode)]
        assert sorted(names) == [f"f{i}" for i in range(6)]
    finally:
        await close(cs)
    assert check_namespace(master) == []


async def test_renames_of_many_sources_onto_one_target(master: Cluster) -> None:
    cs = await clients(master)
    try:
        src = await cs[0].makedir("/many-src")
        dst = await cs[0].makedir("/many-dst")
        for i in range(CLIENTS):
            await cs[0].create(src.inode, f"s{i}", exclusive=True)
        await cs[0].create(dst.inode, "target", exclusive=True)  # replaced too
        won, lost = await race([c.rename_entry(src.inode, f"s{i}", dst.inode, "target") for i, c in enumerate(cs)])
        assert len(won) == CLIENTS and not lost  # rename replaces: every one succeeds, one after another
        assert [n async for n, _ in cs[0].readdir(src.inode)] == []
        assert [n async for n, _ in cs[0].readdir(dst.inode)] == ["target"]
        assert (await cs[0].lookup(dst.inode, "target")).nlink == 1
    finally:
        await close(cs)
    assert check_namespace(master) == []


async def test_renames_of_one_source_to_many_targets(master: Cluster) -> None:
    cs = await clients(master)
    try:
        folder = await cs[0].makedir("/one-src")
        for round_, kind in enumerate(("file", "dir", "file")):
            if kind == "dir":
                await cs[0].mkdir(folder.inode, "src")
            else:
                await cs[0].create(folder.inode, "src", exclusive=True)
            won, lost = await race([c.rename_entry(folder.inode, "src", folder.inode, f"t{round_}-{i}")
                                    for i, c in enumerate(cs)])
            assert len(won) == 1 and {e.errno for e in lost} == {errno.ENOENT}
        names = sorted([n async for n, _ in cs[0].readdir(folder.inode)])
        assert len(names) == 3 and all(n.startswith(("t0-", "t1-", "t2-")) for n in names)
    finally:
        await close(cs)
    assert check_namespace(master) == []


async def test_crossing_directory_renames_never_make_a_cycle(master: Cluster) -> None:
    cs = await clients(master, 2)
    try:
        top = await cs[0].makedir("/cross")
        for round_ in range(8):
            a = await cs[0].mkdir(top.inode, f"a{round_}")
            b = await cs[0].mkdir(top.inode, f"b{round_}")
            won, lost = await race([cs[0].rename_entry(top.inode, f"a{round_}", b.inode, "a"),
                                    cs[1].rename_entry(top.inode, f"b{round_}", a.inode, "b")])
            assert len(won) == 1, f"round {round_}: both moves succeeded"  # the second would make a cycle
            assert lost[0].errno in (errno.EINVAL, errno.ENOENT)
    finally:
        await close(cs)
    assert check_namespace(master) == []


async def test_namespace_storm_stays_consistent(master: Cluster) -> None:
    """Creates, links, renames and removals over a few names in two folders, from every client."""
    cs = await clients(master)
    expected = {errno.ENOENT, errno.EEXIST, errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY, errno.EINVAL}
    try:
        folders = [(await cs[0].makedir(f"/storm{i}")).inode for i in range(2)]
        names = [f"n{i}" for i in range(6)]

        async def worker(client: Client, seed: int) -> Counter[str]:
            rng = random.Random(seed)
            done: Counter[str] = Counter()
            for _ in range(40):
                parent, name = rng.choice(folders), rng.choice(names)
                op = rng.choice(["create", "mkdir", "rename", "rename", "unlink", "rmdir", "link"])
                try:
                    if op == "create":
                        await client.create(parent, name, exclusive=True)
                    elif op == "mkdir":
                        await client.mkdir(parent, name)
                    elif op == "rename":
                        await client.rename_entry(parent, name, rng.choice(folders), rng.choice(names))
                    elif op == "unlink":
                        await client.unlink(parent, name)
                    elif op == "rmdir":
                        await client.rmdir(parent, name)
                    else:
                        attr = await client.lookup(parent, name)
                        if not attr.is_dir:
                            await client.link(attr.inode, rng.choice(folders), rng.choice(names))
                    done[op] += 1
                except DfsError as err:
                    assert err.errno in expected, f"{op}: {err.code} {err.message}"
                    done["refused"] += 1
            return done

        counts = sum(await asyncio.gather(*(worker(c, i) for i, c in enumerate(cs))), Counter())
        assert counts["rename"] > 0 and counts["create"] > 0  # the storm did something
    finally:
        await close(cs)
    assert check_namespace(master) == []


@pytest.mark.skipif(backend() != "postgresql", reason="PostgreSQL only (DFS_TEST_DB=postgresql)")
async def test_overlapping_writers_are_run_again_not_failed(tmp_path: Path) -> None:
    """A master sends its writes one at a time; several processes on one database (here three
    `Database` objects, each with its own write lock) overlap, fail each other's serialisation, and
    are run again: every create of a distinct name succeeds, one create of a shared name wins."""
    url = fresh_database_url()
    assert url is not None
    dbs = [Database(url) for _ in range(3)]
    try:
        for db in dbs:
            await db.start(goal=1)
        config = MasterConfig(data_dir=tmp_path)
        spaces = [Namespace(db, config, Registry(db, config), LeaseTable(), lambda: None) for db in dbs]
        folders = [(await spaces[0].mkdir(ROOT_INODE, f"w{i}", 0o755, 0, 0)).inode for i in range(3)]
        mine = [space.create(folders[i], f"f{j}", 0o644, 0, 0, True)
                for i, space in enumerate(spaces) for j in range(30)]
        made, failed = await race(mine)
        assert len(made) == 90 and not failed
        for round_ in range(5):
            made, failed = await race([space.create(ROOT_INODE, f"shared{round_}", 0o644, 0, 0, True)
                                       for space in spaces for _ in range(3)])
            assert len(made) == 1 and {e.errno for e in failed} == {errno.EEXIST}
    finally:
        for db in dbs:
            await db.close()
    assert check_namespace(url) == []
