"""Where a run root's SQLite store lives: in the root, or on local disk when the root is on a
network filesystem.

SQLite's WAL mode needs shared memory between the processes that use a database, which a
network filesystem does not give, and its byte-range locks are unreliable on many of them
(NFS, SMB, FUSE mounts); SQLite's documentation says not to use WAL there. So a root on such a
filesystem gets its store under the user's state directory, keyed by the root's absolute path:
``$CLIPCL_STORE_DIR`` or ``$XDG_STATE_HOME/clipcl/stores`` (``~/.local/state/clipcl/stores``),
one directory ``<last parts of the path>-<hash>`` holding ``clipcl.sqlite`` and a ``root`` file
naming the root. The chains' records in the root stay the truth: ``clipcl store rebuild``
re-creates a store from them, on any machine.

The filesystem is read from the mount table (``/proc/self/mountinfo``): the type of the mount
the root is on (``nfs``, ``nfs4``, ``lustre``, ``gpfs``, ``beegfs``, ``cifs``, ``fuse.sshfs``,
...), so FUSE network mounts are known by their subtype, which a ``statfs`` magic number does
not tell.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from clipcl.results.schema import DB_NAME

#: Filesystem types (the mount table's, for FUSE ``fuse.<subtype>``) that are network or
#: parallel filesystems: the store does not go there.
NETWORK_FS = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "beegfs",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "glusterfs",
        "ocfs2",
        "gfs2",
        "afs",
        "9p",
        "panfs",
        "wekafs",
        "pvfs2",
        "orangefs",
        "davfs",
        "fuse.sshfs",
        "fuse.glusterfs",
        "fuse.ceph-fuse",
        "fuse.cephfs",
        "fuse.s3fs",
        "fuse.rclone",
        "fuse.gcsfuse",
        "fuse.juicefs",
        "fuse.beegfs",
        "fuse.lustre",
        "fuse.nfs",
        "fuse.fuse-nfs",
        "fuse.davfs",
        "fuse.lizardfs",
        "fuse.mfs",
        "fuse.cvmfs",
    }
)
#: Set to ``local`` or ``root`` to force where stores go (tests, unusual filesystems).
PLACE_ENV = "CLIPCL_STORE_PLACE"
#: Where local stores go instead of the user's state directory.
DIR_ENV = "CLIPCL_STORE_DIR"
ROOT_FILE = "root"


@dataclass(frozen=True)
class Mount:
    """One line of the mount table: where, which filesystem type, from what."""

    point: Path
    fstype: str
    source: str


@dataclass(frozen=True)
class StoreLocation:
    """Where the store of ``root`` is, and why."""

    root: Path
    path: Path
    mount: Mount | None
    local: bool

    def reason(self) -> str:
        """One sentence: the filesystem and the choice."""
        fs = f"{self.mount.fstype} (mount {self.mount.point})" if self.mount else "unknown"
        if self.local:
            if os.environ.get(PLACE_ENV) == "local":
                return f"{PLACE_ENV}=local: the store is on local disk"
            return (
                f"the run root is on a network filesystem, {fs}: the store is kept on "
                "local disk (SQLite's WAL and locks need a local filesystem)"
            )
        if os.environ.get(PLACE_ENV) == "root":
            return f"{PLACE_ENV}=root: the store is in the run root ({fs})"
        return f"the run root is on a local filesystem, {fs}: the store is in the root"


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a ``/proc/<pid>/mountinfo`` text, in table order."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if not sep or len(fields) < 5 or len(rest) < 2:
            continue
        mounts.append(Mount(Path(_unescape(fields[4])), rest[0], _unescape(rest[1])))
    return mounts


def mount_of(path: Path, mounts: list[Mount] | None = None) -> Mount | None:
    """The mount ``path`` is on: the longest mount point above it, the last mounted where
    two share a point. Without ``mounts`` (this process's mount table), the path's nearest
    existing ancestor, symbolic links resolved, is looked up."""
    path = Path(os.path.abspath(path))
    if mounts is None:
        while not path.exists() and path != path.parent:
            path = path.parent
        path = path.resolve()
        try:
            mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
        except OSError:
            return None
    best: Mount | None = None
    for m in mounts:
        above = path == m.point or m.point in path.parents
        if above and (best is None or len(m.point.parts) >= len(best.point.parts)):
            best = m
    return best


def is_network(fstype: str) -> bool:
    """Whether a mount table type is a network or parallel filesystem."""
    return fstype in NETWORK_FS or fstype.split(".")[0] in {"nfs", "nfs4", "lustre"}


def state_dir() -> Path:
    """Where local stores go: ``$CLIPCL_STORE_DIR``, else the user's state directory."""
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "clipcl" / "stores"


def local_dir(root: Path) -> Path:
    """The local directory of ``root``'s store: the path's last parts (readable) + a hash."""
    absolute = str(Path(os.path.abspath(root)))
    digest = hashlib.sha256(absolute.encode()).hexdigest()[:16]
    tail = "-".join(Path(absolute).parts[-2:])
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", tail).strip("._-")[:60] or "root"
    return state_dir() / f"{tail}-{digest}"


def locate(root: Path) -> StoreLocation:
    """Where the store of ``root`` is (nothing is created)."""
    root = Path(root)
    mount = mount_of(root)
    place = os.environ.get(PLACE_ENV)
    local = place == "local" or (place != "root" and mount is not None and is_network(mount.fstype))
    path = local_dir(root) / DB_NAME if local else root / DB_NAME
    return StoreLocation(root, path, mount, local)


def store_path(root: Path) -> Path:
    """The store file of ``root`` (see :func:`locate`)."""
    return locate(root).path


def prepare_local(location: StoreLocation) -> bool:
    """Create the local store's directory and its ``root`` file (naming the run root);
    whether this is the first time (the directory was new)."""
    folder = location.path.parent
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / ROOT_FILE
    if marker.is_file():
        return False
    marker.write_text(str(Path(os.path.abspath(location.root))) + "\n")
    return True
