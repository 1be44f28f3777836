"""(d) kill -9 the master 5 times during a stream of metadata operations: every acknowledged operation
survives, and the placement stays consistent."""

from __future__ import annotations

import errno
import random
import threading
from collections.abc import Callable

from dfs.client.sync import SyncClient
from dfs.errors import DfsError
from tests.faults.helpers import check_placement, pattern, sha, upload, wait_until
from tests.harness import Cluster


class Stream:
    """Metadata operations in a loop, each recorded once the master acknowledged it."""

    def __init__(self, fs: SyncClient) -> None:
        self.fs = fs
        self.dirs: list[str] = []
        self.files: dict[str, str] = {}  # path -> sha256 of its content
        self.gone: set[str] = set()
        self.errors: list[str] = []
        self.pause = threading.Event()
        self.paused = threading.Event()
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        rng = random.Random(9)
        i = 0
        while not self.stop.is_set():
            if self.pause.is_set():
                self.paused.set()
                self.stop.wait(0.02)
                continue
            self.paused.clear()
            i += 1
            try:
                self.step(i, rng)
            except DfsError as err:  # an unacknowledged operation may or may not have happened
                self.errors.append(f"op {i}: {err.code} {err.message}")

    def step(self, i: int, rng: random.Random) -> None:
        fs = self.fs
        kind = i % 4
        if kind == 0:
            path = f"/d{i}"
            try:
                fs.makedir(path)
            except DfsError as err:  # retried after a restart: the first attempt did it
                if err.errno != errno.EEXIST:
                    raise
            with self.lock:
                self.dirs.append(path)
        elif kind in (1, 2):
            parent = self.dirs[-1] if self.dirs else ""
            path = f"{parent}/f{i}"
            data = pattern(rng.randrange(0, 300_000), i)
            upload(fs, path, data)
            with self.lock:
                self.files[path] = sha(data)
        else:
            with self.lock:
                candidates = sorted(self.files)
            if not candidates:
                return
            victim = rng.choice(candidates)
            try:
                if rng.random() < 0.5:
                    target = victim + ".moved"
                    fs.rename(victim, target)
                    with self.lock:
                        self.files[target] = self.files.pop(victim)
                        self.gone.add(victim)
                else:
                    fs.remove(victim)
                    with self.lock:
                        del self.files[victim]
                        self.gone.add(victim)
            except DfsError:  # not acknowledged: it may have happened (a retry after a restart): unknown now
                with self.lock:
                    self.files.pop(victim, None)
                raise

    def snapshot(self) -> tuple[list[str], dict[str, str], set[str]]:
        with self.lock:
            return list(self.dirs), dict(self.files), set(self.gone)


def test_master_kill_9_loses_no_acknowledged_operation(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(goal=2)
    cluster.start(chunkservers=3, gateway=False)
    assert cluster.master is not None
    rng = random.Random(3)
    with SyncClient(cluster.master_url, retry_for=30) as fs:
        stream = Stream(fs)
        worker = threading.Thread(target=stream.run, daemon=True)
        worker.start()
        try:
            for _ in range(5):
                stream.stop.wait(rng.uniform(0.4, 1.0))
                acknowledged = stream.snapshot()  # everything here was acknowledged before the kill
                cluster.master.kill()
                cluster.start_master()
                cluster.wait_servers(3)
                stream.pause.set()
                wait_until("the stream to pause", stream.paused.is_set, 30)
                dirs, files, gone = acknowledged
                for path in dirs:
                    assert fs.stat(path).is_dir, path
                _, now_files, _ = stream.snapshot()
                for path, digest in files.items():
                    if path in now_files:  # not renamed or removed since (acknowledged later)
                        content = b"".join(fs.download(path))
                        assert sha(content) == digest, path
                for path in gone:
                    assert not fs.exists(path), path
                assert check_placement(cluster) == []
                stream.pause.clear()
        finally:
            stream.stop.set()
            worker.join(30)
    dirs, files, _ = stream.snapshot()
    assert len(dirs) >= 3 and len(files) >= 5, (len(dirs), len(files), stream.errors)
    assert len(stream.errors) <= 5, stream.errors
    print(f"{len(dirs)} folders, {len(files)} files; unacknowledged operations: {stream.errors}")
