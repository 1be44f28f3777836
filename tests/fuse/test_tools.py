"""Real tools on the mount, compared with the same work on a local folder."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tarfile
from pathlib import Path

import pytest


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def make_tree(root: Path) -> None:
    """A small source tree: nested folders, text and binary files, a symlink, odd modes."""
    for i in range(4):
        folder = root / f"pkg{i}" / "sub"
        folder.mkdir(parents=True)
        for j in range(12):
            (folder / f"mod{j}.py").write_text(f"# module {i}.{j}\n" + "x = 1\n" * (j * 50))
        (root / f"pkg{i}" / "blob.bin").write_bytes(os.urandom(150_000 + i))
    (root / "README").write_text("readme\n")
    (root / "link").symlink_to("README")
    os.chmod(root / "README", 0o640)
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    source.mkdir()
    make_tree(source)
    return source


def test_tar_extract_then_diff(mnt: Path, tree: Path, tmp_path: Path) -> None:
    need("tar", "diff")
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="tree")
    run("tar", "xzf", str(archive), cwd=mnt)
    run("diff", "-r", "--no-dereference", str(tree), str(mnt / "tree"))


def test_cp_a_and_rsync(mnt: Path, tree: Path) -> None:
    need("cp", "diff")
    run("cp", "-a", str(tree), str(mnt / "copy"))
    run("diff", "-r", "--no-dereference", str(tree), str(mnt / "copy"))
    assert os.stat(mnt / "copy" / "README").st_mode & 0o777 == 0o640
    assert os.readlink(mnt / "copy" / "link") == "README"
    need("rsync")
    run("rsync", "-a", str(tree) + "/", str(mnt / "synced") + "/")
    run("diff", "-r", "--no-dereference", str(tree), str(mnt / "synced"))
    (tree / "README").write_text("changed\n")
    run("rsync", "-a", "--delete", str(tree) + "/", str(mnt / "synced") + "/")
    assert (mnt / "synced" / "README").read_text() == "changed\n"


def test_git(mnt: Path, tree: Path) -> None:
    need("git")
    repo = mnt / "repo"
    shutil.copytree(tree, repo, symlinks=True)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(mnt)}
    run("git", "init", "-q", cwd=repo, env=env)
    run("git", "add", "-A", cwd=repo, env=env)
    run("git", "commit", "-q", "-m", "first", cwd=repo, env=env)
    (repo / "README").write_text("second\n")
    run("git", "commit", "-q", "-am", "second", cwd=repo, env=env)
    log = run("git", "log", "--oneline", cwd=repo, env=env)
    assert len(log.splitlines()) == 2
    assert run("git", "status", "--porcelain", cwd=repo, env=env) == ""
    run("git", "fsck", "--no-progress", cwd=repo, env=env)


def test_sqlite_database(mnt: Path) -> None:
    path = mnt / "db.sqlite"
    db = sqlite3.connect(path)
    try:
        db.execute("create table t (id integer primary key, v text)")
        with db:
            db.executemany("insert into t (v) values (?)", ((f"value {i}" * 3,) for i in range(10_000)))
        assert db.execute("select count(*) from t").fetchone()[0] == 10_000
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    again = sqlite3.connect(path)
    try:
        assert again.execute("select v from t where id = 5000").fetchone()[0] == "value 4999" * 3
    finally:
        again.close()


def test_fio_verify(mnt: Path) -> None:
    need("fio")
    run("fio", "--name=verify", f"--directory={mnt}", "--rw=randwrite", "--bs=4k", "--size=8m",
        "--verify=crc32c", "--do_verify=1", "--ioengine=psync", "--end_fsync=1", "--verify_state_save=0",
        cwd=mnt)
