"""Where a run root's store lives: the mount table decides (network filesystems by their type,
FUSE ones by their subtype), a local store is keyed by the root's path, an older store in the
root is adopted once, ``clipcl store where`` says which and why."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from clipcl.results.location import (
    Mount,
    is_network,
    local_dir,
    locate,
    mount_of,
    parse_mountinfo,
)
from clipcl.results.store import ResultsStore, rebuild_store
from tests.helpers import clipcl_inprocess

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /scratch rw,relatime shared:5 - lustre 10.0.0.1@tcp:/scratch rw,flock
31 22 0:41 / /home rw,relatime shared:6 - nfs4 fs1:/export/home rw,vers=4.2
32 31 0:42 / /home/ana/local\\040disk rw - xfs /dev/sdb1 rw
33 22 0:43 / /mnt/ssh rw,nosuid,nodev - fuse.sshfs ana@login:/data rw,user_id=0
34 22 0:44 / /tmp rw - tmpfs tmpfs rw
35 34 0:45 / /tmp rw - nfs fs2:/tmp rw
36 22 0:46 / /mnt/enc rw - fuse.gocryptfs /home/ana/.enc rw
"""


def test_the_mount_table_is_parsed_with_escapes_and_the_longest_mount_wins():
    mounts = parse_mountinfo(MOUNTINFO)
    assert mounts[3] == Mount(Path("/home/ana/local disk"), "xfs", "/dev/sdb1")

    def fstype(path: str) -> str:
        found = mount_of(Path(path), mounts)
        assert found is not None
        return found.fstype

    assert fstype("/scratch/ana/runs") == "lustre"
    assert fstype("/home/ana/runs") == "nfs4"
    assert fstype("/home/ana/local disk/runs") == "xfs"  # a local disk mounted inside NFS
    assert fstype("/mnt/ssh/runs") == "fuse.sshfs"
    assert fstype("/tmp/x") == "nfs"  # two mounts on one point: the later one is seen
    assert fstype("/srv/runs") == "ext4"


@pytest.mark.parametrize(
    "fstype,network",
    [
        ("nfs", True),
        ("nfs4", True),
        ("lustre", True),
        ("gpfs", True),
        ("beegfs", True),
        ("cifs", True),
        ("fuse.sshfs", True),
        ("fuse.juicefs", True),
        ("ceph", True),
        ("ext4", False),
        ("xfs", False),
        ("btrfs", False),
        ("tmpfs", False),
        ("overlay", False),
        ("fuse.gocryptfs", False),
    ],
)
def test_network_filesystems_are_known_by_their_mount_type(fstype, network):
    assert is_network(fstype) is network


def test_local_store_dirs_are_readable_and_distinct(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPCL_STORE_DIR", str(tmp_path / "stores"))
    a, b = local_dir(Path("/scratch/ana/runs")), local_dir(Path("/scratch/bob/runs"))
    assert a.parent == tmp_path / "stores" and a != b
    assert a.name.startswith("ana-runs-") and b.name.startswith("bob-runs-")
    assert local_dir(Path("/scratch/ana/runs")) == a  # stable


def test_a_root_on_a_network_filesystem_gets_its_store_on_local_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPCL_STORE_DIR", str(tmp_path / "stores"))
    monkeypatch.setenv("CLIPCL_STORE_PLACE", "local")  # this test's tmp is not on NFS
    root = tmp_path / "runs"
    with ResultsStore(root) as store:
        store.record_sweep("s", "s.yaml", {"name": "s"}, [])
        path = store.path
    assert path.parent.parent == tmp_path / "stores" and path.is_file()
    assert (path.parent / "root").read_text().strip() == str(root)
    assert not (root / "clipcl.sqlite").exists()
    with ResultsStore(root) as again:
        assert [s.name for s in again.sweeps()] == ["s"]


def test_an_older_store_in_the_root_is_adopted_once_and_rebuild_starts_empty(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    with ResultsStore(root) as old:  # written in the root, as an older clipcl did
        old.record_sweep("s", "s.yaml", {"name": "s"}, [])
    monkeypatch.setenv("CLIPCL_STORE_DIR", str(tmp_path / "stores"))
    monkeypatch.setenv("CLIPCL_STORE_PLACE", "local")
    with ResultsStore(root) as store:
        assert [s.name for s in store.sweeps()] == ["s"]  # copied over
        assert store.path != root / "clipcl.sqlite"
    kept, fresh = rebuild_store(root)
    with fresh:
        assert fresh.sweeps() == [] and kept is not None and kept.parent == fresh.path.parent
    assert sqlite3.connect(root / "clipcl.sqlite").execute("SELECT name FROM sweeps").fetchall()


def test_store_where_says_which_file_and_why(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    shown = clipcl_inprocess("store", "where", str(root))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == str(root / "clipcl.sqlite")
    assert "local filesystem" in lines[1] and "not created yet" in lines[1]
    assert not root.exists()  # creates nothing
    monkeypatch.setenv("CLIPCL_STORE_DIR", str(tmp_path / "stores"))
    monkeypatch.setenv("CLIPCL_STORE_PLACE", "local")
    shown = clipcl_inprocess("store", "where", "--root", str(root))
    assert shown.stdout.splitlines()[0] == str(locate(root).path)
    assert str(tmp_path / "stores") in shown.stdout.splitlines()[0]


def test_an_unwritable_local_store_dir_is_one_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("CLIPCL_STORE_DIR", str(blocker / "stores"))
    monkeypatch.setenv("CLIPCL_STORE_PLACE", "local")
    got = clipcl_inprocess("store", "rebuild", "--root", str(tmp_path / "runs"))
    assert got.returncode == 2, (got.stdout, got.stderr)
    errors = [line for line in got.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "CLIPCL_STORE_DIR" in errors[0], got.stderr
    assert "Traceback" not in got.stderr


def test_a_damaged_local_store_names_the_run_root_to_rebuild(tmp_path, monkeypatch):
    from clipcl.results.schema import StoreDamaged

    monkeypatch.setenv("CLIPCL_STORE_DIR", str(tmp_path / "stores"))
    monkeypatch.setenv("CLIPCL_STORE_PLACE", "local")
    root = tmp_path / "runs"
    with ResultsStore(root) as store:
        path = store.path
    path.write_bytes(b"not a database" * 100)
    for side in ("-wal", "-shm"):
        path.with_name(path.name + side).unlink(missing_ok=True)
    with pytest.raises(StoreDamaged) as info:
        ResultsStore(root)
    assert f"clipcl store rebuild --root {root}`" in str(info.value)
