"""Launching workers on a cluster scheduler (SLURM) or locally, through submitit.

``mixbench run ... --launcher slurm --workers K`` submits K worker jobs as a SLURM job array;
``--launcher local`` starts K local worker processes through submitit's local executor (the
same code path, which is how the tests exercise it). submitit pickles the matrix's resolved
cells into each job, which runs :func:`run_worker`: the workers share the results database of
the run, claim cells one at a time and stop when none is left. The database URL travels in the
environment (:data:`~mixbench.bench.run.DB_ENV`), never in a job file; the job files (pickled
cells, logs, pickled results) are written owner-only (``0600``, in a ``0700`` folder). The
workers import the mixbench of the launching process, wherever they start
(:func:`same_package_environment`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixbench.bench.run import DB_ENV
from mixbench.bench.run.environment import environment, shared_cpu_environment
from mixbench.config import CellConfig
from mixbench.errors import UsageError

LAUNCHERS = ("local", "slurm")
#: The file-creation mask of the launcher's job files: readable and writable by the owner only.
PRIVATE_UMASK = 0o077


@contextlib.contextmanager
def private_files() -> Iterator[int]:
    """Files and folders created in the block (and by processes started in it) are owner-only;
    yields the mask in force before."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield previous
    finally:
        os.umask(previous)


@dataclass
class SlurmOptions:
    """What the SLURM job array asks for."""

    partition: str | None = None
    time_minutes: int = 24 * 60
    gpus_per_task: int = 0
    cpus_per_task: int = 8


def run_worker(
    index: int,
    *,
    cells: list[CellConfig],
    out_dir: Path,
    retry_failed: bool = False,
    nproc_per_node: int = 1,
    umask: int | None = None,
) -> int:
    """What launched job ``index`` runs: claim and run ``cells`` of the shared database (its
    URL from the environment) until none is left; returns the job's exit status.

    Plug-ins named in the environment (``--plugin`` of the launching command) are imported
    first, so that their methods, models and data sets resolve. The cells' files are written
    under ``umask`` (the launching command's), the job's own files (its pickled result) under
    the owner-only mask the job started with.
    """
    from mixbench.bench.run.matrix import run_matrix
    from mixbench.plugins import load_environment_plugins

    load_environment_plugins()
    job_umask = os.umask(umask) if umask is not None else None
    try:
        summary = run_matrix(
            cells,
            out_dir,
            os.environ.get(DB_ENV),
            retry_failed=retry_failed,
            nproc_per_node=nproc_per_node,
        )
    finally:
        if job_umask is not None:
            os.umask(job_umask)
    print(
        f"worker {index} done: {summary.ran} cells run, {len(summary.failed)} failed in the matrix",
        file=sys.stderr,
    )
    return 0


def same_package_environment() -> dict[str, str]:
    """``PYTHONPATH`` and ``PYTHONSAFEPATH`` that make a launched Python import this mixbench.

    submitit starts workers with ``python -m``, which puts the working folder first on
    ``sys.path``: from a folder that holds another ``mixbench/`` (a checkout, say) the workers
    would import that one. ``PYTHONSAFEPATH`` (Python 3.11 on) leaves the working folder out,
    and ``PYTHONPATH`` starts with the folder this mixbench was imported from, then the working
    folder where this process has it on its path (plug-in modules found there), then the
    ``PYTHONPATH`` already set.
    """
    from mixbench import errors

    paths = [str(Path(errors.__file__).resolve().parent.parent)]
    if "" in sys.path or os.getcwd() in sys.path:
        paths.append(os.getcwd())
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "PYTHONSAFEPATH": "1"}


def launch_matrix(
    launcher: str,
    workers: int,
    cells: list[CellConfig],
    out_dir: Path,
    db_url: str,
    slurm: SlurmOptions | None = None,
    *,
    retry_failed: bool = False,
    nproc_per_node: int = 1,
) -> list[Any]:
    """Submit ``workers`` jobs running :func:`run_worker` on ``cells``; returns the jobs.

    Logs go to ``out_dir/launcher-logs``, an owner-only folder whose files (the pickled cells
    and results, the logs) are owner-only too (:func:`private_files`); secrets such as the
    database URL travel in the environment. Launched cells show no progress bars (their output
    is a log file); local workers share this machine's cores (:func:`shared_cpu_environment`).
    """
    if launcher not in LAUNCHERS:
        raise UsageError(f"unknown launcher {launcher!r}; valid launchers: {', '.join(LAUNCHERS)}")
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    log_dir = out_dir / "launcher-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_dir.chmod(0o700)
    with private_files() as umask:
        return _submit(
            launcher,
            workers,
            cells,
            out_dir,
            db_url,
            log_dir,
            slurm,
            umask=umask,
            retry_failed=retry_failed,
            nproc_per_node=nproc_per_node,
        )


def _submit(
    launcher: str,
    workers: int,
    cells: list[CellConfig],
    out_dir: Path,
    db_url: str,
    log_dir: Path,
    slurm: SlurmOptions | None,
    *,
    umask: int,
    retry_failed: bool,
    nproc_per_node: int,
) -> list[Any]:
    """Submit the jobs of :func:`launch_matrix` (called with owner-only file creation)."""
    import submitit

    slurm = slurm or SlurmOptions()
    if launcher == "local":
        executor: Any = submitit.LocalExecutor(folder=str(log_dir))
        executor.update_parameters(timeout_min=slurm.time_minutes)
    else:
        executor = submitit.AutoExecutor(folder=str(log_dir), cluster="slurm")
        params: dict[str, Any] = {
            "timeout_min": slurm.time_minutes,
            "gpus_per_node": slurm.gpus_per_task,
            "cpus_per_task": slurm.cpus_per_task,
            "tasks_per_node": 1,
            "slurm_array_parallelism": workers,
            "name": "mixbench-worker",
        }
        if slurm.partition:
            params["slurm_partition"] = slurm.partition
        executor.update_parameters(**params)
    quiet = [
        dataclasses.replace(c, runtime=dataclasses.replace(c.runtime, progress=False))
        for c in cells
    ]
    job = functools.partial(
        run_worker,
        cells=quiet,
        out_dir=out_dir,
        retry_failed=retry_failed,
        nproc_per_node=nproc_per_node,
        umask=umask,
    )
    env = {DB_ENV: db_url, **same_package_environment()}
    if launcher == "local":
        env.update(shared_cpu_environment(workers))
    with environment(env):  # copied into the jobs when they are submitted
        return executor.map_array(job, list(range(workers)))


def wait_for(jobs: list[Any], log: Any = None) -> list[int]:
    """Wait for every job; returns their exit statuses (1 for a job that raised).

    The last lines of a failed job's standard error are printed to ``log``.
    """
    statuses = []
    for job in jobs:
        try:
            statuses.append(int(job.result() or 0))
        except Exception as exc:
            statuses.append(1)
            if log is not None:
                tail = "\n".join(str(exc).strip().splitlines()[-15:])
                print(f"worker job {job.job_id} failed:\n{tail}", file=log)
    return statuses
