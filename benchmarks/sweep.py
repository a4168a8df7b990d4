"""The independent runs of a study (model x seed x method or variant), one after another or as Ray tasks.

    failed = run_sweep(groups, on_result, ray=None)        # serially, in this process, as the studies always did
    failed = run_sweep(groups, on_result, ray="auto")      # a local Ray on this machine, one CPU per run
    failed = run_sweep(groups, on_result, ray="HOST:6379") # an existing cluster (`ray start --head` there)

A `Group` is the runs that share one prepared input (for a model and a seed: the model with its fitted head
and the small and test images as tensors). It is prepared once, here, where the image folders are, and goes
to the workers through Ray's object store: no worker reads an image folder or a weights path, so a cluster
needs no shared file system, only the same environment on every node (`pip install -e ".[ray]"`) and
network access to the head. The code reaches them as Ray's `working_dir` (this repository, without the
virtual environment, artifacts and results).

Every result reaches `on_result(key, result)` as soon as its run finishes, with `wall_s` and `worker` (host
and process) added, so that the caller writes it atomically before the next lands; a run that raised, or
whose worker or node was lost, is returned among the failures with its key and why, never retried behind
the caller's back, so that `--resume` reruns exactly what is missing. Ray core tasks rather than Ray Tune:
a study is a fixed grid whose results the study aggregates itself (no search, no scheduler, no trial
checkpoints), and `ray.wait` hands over each result the moment it exists.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import socket
import sys
import time
from typing import Any, Callable

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Not sent to a cluster's workers: they need the code, never the environment, the data or the results.
WORKING_DIR_EXCLUDES = [".git", ".venv", ".cache", "artifacts", "benchmarks/results", "**/__pycache__", "*.onnx",
                        "*.engine", "*.safetensors"]
SEARCH_PATH = ("", "benchmarks", "scripts")  # what the studies put on sys.path, relative to the repository


@dataclasses.dataclass
class Group:
    name: str  # e.g. "mobilenet_v2 seed 0", for progress lines
    prepare: Callable[[], Any]  # the shared input, built here
    runs: list  # [(key, function(shared, *args) -> dict, args)]: keys are tuples, unique over the sweep


def add_sweep_options(parser: Any, unit: str) -> None:
    """A study's --ray and --threads."""
    parser.add_argument("--ray", metavar="auto|ADDRESS",
                        help=f"run every {unit} as a Ray task: auto starts Ray on this machine, HOST:PORT joins a "
                             "cluster (benchmarks/sweep.py); without it the runs go one by one")
    parser.add_argument("--threads", type=int,
                        help="torch threads per run (and CPUs per Ray task); pin it for figures that are the same "
                             "serially and on Ray (default: torch's, all cores serially, one per Ray task)")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def timed_run(function: Callable, shared: Any, threads: int | None, *args: Any) -> dict:
    """One run with its wall time, where it ran and on how many torch threads (the same wrapper serially and on
    a worker). `threads` pins torch's intra-op threads: float sums, and so the controller's choices, depend on it."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    result = function(shared, *args)
    return dict(result, wall_s=round(time.perf_counter() - started, 1), worker=worker_name(),
                torch_threads=torch.get_num_threads())


class Progress:
    """`[sweep] 3/12 runs done (1 failed), 4 min 10 s so far, about 12 min left` after every run."""

    def __init__(self, total: int, parallel: int, enabled: bool = True) -> None:
        self.total, self.parallel, self.enabled = total, max(1, parallel), enabled
        self.done = self.failed = 0
        self.started = time.perf_counter()
        self.walls: list = []

    def finished(self, key: tuple, wall_s: float | None, error: str | None = None) -> None:
        self.done += 1
        if error is None:
            self.walls.append(wall_s or 0.0)
        else:
            self.failed += 1
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        left = self.total - self.done
        eta = (sum(self.walls) / len(self.walls)) * left / min(self.parallel, max(left, 1)) if self.walls else None
        what = f"{' '.join(map(str, key))}: " + (f"failed ({error})" if error else f"{wall_s:.0f} s")
        print(f"[sweep] {what}; {self.done}/{self.total} runs done"
              + (f" ({self.failed} failed)" if self.failed else "")
              + f", {_duration(elapsed)} so far" + (f", about {_duration(eta)} left" if eta and left else ""),
              file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _reason(exc: BaseException) -> str:
    from runtime_bench.errors import first_line

    cause = getattr(exc, "cause", None)  # a RayTaskError carries the run's own exception
    return first_line(cause if isinstance(cause, BaseException) else exc, limit=300, typed=True)


def run_sweep(groups: list, on_result: Callable[[tuple, dict], None], ray: str | None = None,
              threads: int | None = None, progress: bool = True) -> list:
    """Run every run of every group; `on_result(key, result)` as each one finishes. Returns the failures,
    [{"key": key, "error": one line}], in the order they happened.

    `threads`: torch threads per run (and CPUs per Ray task). None: torch's default, which is every core in
    this process and one per task on Ray (Ray sets OMP_NUM_THREADS), so pin it for figures that are the same
    to the last bit serially and on Ray; the controller's decisions can differ with it."""
    total = sum(len(g.runs) for g in groups)
    if ray is None:
        return _serial(groups, on_result, threads, Progress(total, 1, progress))
    return _on_ray(groups, on_result, ray, threads, total, progress)


def _serial(groups: list, on_result: Callable, threads: int | None, progress: Progress) -> list:
    failed = []
    for group in groups:
        if not group.runs:
            continue
        shared = group.prepare()
        for key, function, args in group.runs:
            _land(key, lambda: timed_run(function, shared, threads, *args), on_result, progress, failed)
    return failed


def _land(key: tuple, outcome: Callable[[], dict], on_result: Callable, progress: Progress, failed: list) -> None:
    """Hand a finished run's result over, or note its failure by name; the other runs go on either way."""
    try:
        result = outcome()
    except Exception as exc:  # noqa: BLE001 - its own error, or Ray's RayTaskError, WorkerCrashedError, NodeDiedError
        failed.append({"key": key, "error": _reason(exc)})
        progress.finished(key, None, failed[-1]["error"])
        return
    on_result(key, result)
    progress.finished(key, result["wall_s"])


def start_ray(address: str) -> Any:
    """Ray, started here (`auto`) or joined (`HOST:PORT`), with this repository as the workers' code."""
    try:
        import ray
    except ImportError:
        from runtime_bench.errors import InputError

        raise InputError(f"--ray {address}: Ray is not installed (pip install -e \".[ray]\")") from None
    if ray.is_initialized():
        return ray
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p or "." for p in SEARCH_PATH)}}
    if os.environ.get("TORCH_HOME"):
        env["env_vars"]["TORCH_HOME"] = os.environ["TORCH_HOME"]
    if address == "auto":  # a local Ray: the workers see this checkout as it is
        env["env_vars"]["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in SEARCH_PATH)
        ray.init(runtime_env=env, include_dashboard=False, logging_level="ERROR", log_to_driver=True)
    else:
        _check_reachable(address)
        try:
            ray.init(address=address, runtime_env=dict(env, working_dir=str(ROOT), excludes=WORKING_DIR_EXCLUDES),
                     logging_level="ERROR")
        except ConnectionError as exc:
            from runtime_bench.errors import CheckFailed

            raise CheckFailed(f"--ray {address}: cannot join a Ray cluster there ({_reason(exc)}); start one with "
                              "`ray start --head` on that machine, and where it uses token authentication (Ray's "
                              "default since 2.5x) run with RAY_AUTH_MODE=token and its ~/.ray/auth_token") from None
    return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT that nothing answers on fails in seconds, not after Ray's minutes of retries."""
    from runtime_bench.errors import CheckFailed, InputError

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray {address}: expected auto or HOST:PORT of a Ray head (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise CheckFailed(f"--ray {address}: nothing answers there ({exc.strerror or exc}); start the head with "
                          "`ray start --head` on that machine") from None


def _on_ray(groups: list, on_result: Callable, address: str, threads: int | None, total: int,
            progress_enabled: bool) -> list:
    ray = start_ray(address)
    cpus = threads or 1
    remote = ray.remote(num_cpus=cpus, max_retries=0)(timed_run)  # a lost run is reported, and rerun on --resume
    progress = Progress(total, int(ray.cluster_resources().get("CPU", 1)) // cpus, progress_enabled)
    pending: dict = {}
    for group in groups:
        if not group.runs:
            continue
        shared = ray.put(group.prepare())  # once per group; the workers read it from the object store
        for key, function, args in group.runs:
            pending[remote.remote(function, shared, threads, *args)] = key
    failed = []
    while pending:
        (ready,), _ = ray.wait(list(pending), num_returns=1)
        _land(pending.pop(ready), lambda: ray.get(ready), on_result, progress, failed)
    return failed


def report_failures(failed: list, results: Any) -> int:
    """One line per failed run, by name, and what to do; the exit code of a study with missing runs."""
    for failure in failed:
        print(f"failed: {' '.join(map(str, failure['key']))}: {failure['error']}", file=sys.stderr)
    print(f"{len(failed)} run(s) failed; {results} holds the finished ones (no summary or README table from an "
          "incomplete study); rerun with --resume to do the missing ones", file=sys.stderr)
    return 1


def keep_run(study: dict, key: tuple, result: dict, path: Any, started: float) -> dict:
    """A landed run in the study's JSON, written atomically at once (model and seed from its key); the run."""
    from runtime_bench.atomic import write_json_atomic

    run = dict(result, model=key[0], seed=key[1])
    study["runs"].append(run)
    study["seconds"] = time.perf_counter() - started
    write_json_atomic(study, path)  # the summary only once every run is in
    return run


def one_line_errors(main: Callable[[], int]) -> int:
    """A study's `main()`, with our errors (no Ray, no cluster there, bad input) as one line and their exit code."""
    from runtime_bench.errors import EdgePruneError

    try:
        return main()
    except EdgePruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
