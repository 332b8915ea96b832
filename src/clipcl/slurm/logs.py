"""Where the stdout/stderr of a chain's Slurm jobs are: submitit's files for jobs that clipcl
submitted (their ids are in the store), the array script's files for plain ``sbatch`` runs
(each element's stdout starts with a line naming its chain).
"""

from __future__ import annotations

from pathlib import Path


def _submitit_paths(folder: str, job_id: str) -> list[Path]:
    base = Path(folder) / f"{job_id}_0_log"
    return [base.with_suffix(".out"), base.with_suffix(".err")]


def chain_log_files(root: Path, chain_id: str) -> list[Path]:
    """Existing log files of every Slurm job of ``chain_id``, oldest job first."""
    files: list[Path] = []
    from clipcl.results.store import store_exists

    if store_exists(Path(root)):
        from clipcl.results.store import ResultsStore
        from clipcl.slurm.track import BACKEND_NAME

        with ResultsStore(root) as store:
            jobs = store.jobs([chain_id], backend=BACKEND_NAME)
        for job in jobs:
            if job.log_dir is not None:
                files += [p for p in _submitit_paths(job.log_dir, job.job_id) if p.is_file()]
    script_logs = Path(root) / "slurm" / "sbatch"
    if script_logs.is_dir():
        marker = f"chain {chain_id} "
        for out in sorted(script_logs.glob("*.out"), key=lambda p: p.stat().st_mtime):
            with open(out, errors="replace") as fh:
                if fh.readline().startswith(marker):
                    files += [p for p in (out, out.with_suffix(".err")) if p.is_file()]
    return files
