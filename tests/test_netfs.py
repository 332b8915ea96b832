"""A run root on a real network filesystem: sshfs (FUSE over SFTP) mounted from an OpenSSH
server on loopback (scripts/netfs-dev.sh; this kernel has no NFS client). The store goes to
local disk, the chains' records over the network to the server's directory, and the results
equal those of the same sweep on local disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from clipcl.results.location import mount_of

pytestmark = [pytest.mark.netfs, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "netfs-dev.sh"
CLIPCL = Path(sys.executable).parent / "clipcl"


@pytest.fixture(scope="module")
def netfs():
    if os.geteuid() != 0 or shutil.which("sshfs") is None or not Path("/dev/fuse").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but sshfs cannot be mounted (root, sshfs, /dev/fuse)")
        pytest.skip("sshfs needs root, the sshfs package and /dev/fuse")
    state = Path(tempfile.mkdtemp(prefix="clipcl-netfs-"))
    env = {**os.environ, "CLIPCL_NETFS_DIR": str(state)}
    up = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, env=env, timeout=120)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        yield Path(up.stdout.strip().splitlines()[-1]), state / "export"
    finally:
        down = subprocess.run(
            [str(SCRIPT), "down"], capture_output=True, text=True, env=env, timeout=60
        )
        shutil.rmtree(state, ignore_errors=True)
        assert down.returncode == 0, down.stderr


def _clipcl(cwd: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(CLIPCL), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


SWEEP = (
    "name: netfs\nroot: runs\nbenchmarks: [smoke]\nmethods: {finetune: {}}\n"
    "train: {iterations: 20}\nseeds: [0, 1]\n"
)


def test_a_sweep_on_sshfs_keeps_its_store_on_local_disk_and_matches_local(
    netfs, tmp_path: Path
) -> None:
    mnt, export = netfs
    stores = tmp_path / "stores"
    env = {**os.environ, "CLIPCL_STORE_DIR": str(stores)}
    env.pop("CLIPCL_STORE_PLACE", None)
    work = mnt / "lab"
    work.mkdir()
    local = tmp_path / "local"
    local.mkdir()
    for where in (work, local):
        (where / "netfs.yaml").write_text(SWEEP)
    found = mount_of(work)
    assert found is not None and found.fstype == "fuse.sshfs", found

    where = _clipcl(work, env, "store", "where", "netfs.yaml").stdout.splitlines()
    assert where[0].startswith(str(stores)), where
    assert "network filesystem, fuse.sshfs" in where[1], where
    for cwd in (work, local):
        _clipcl(cwd, env, "submit", "netfs.yaml", "--backend", "local", "--jobs", "2", "--follow")
    on_netfs = _clipcl(work, env, "results", "netfs.yaml", "--format", "json").stdout
    on_disk = _clipcl(local, env, "results", "netfs.yaml", "--format", "json").stdout
    assert json.loads(on_netfs) == json.loads(on_disk)

    assert not (work / "runs" / "clipcl.sqlite").exists()  # not on the network filesystem
    assert (local / "runs" / "clipcl.sqlite").is_file()  # local disk: in the root, as before
    assert Path(where[0]).is_file()
    served = export / "lab" / "runs" / "chains"  # the records went through sshfs to the server
    chains = sorted(p.name for p in served.iterdir())
    assert len(chains) == 2 and all((served / c / "state.json").is_file() for c in chains)
    status = _clipcl(work, env, "status", "netfs.yaml").stdout
    assert "2 done" in status, status
