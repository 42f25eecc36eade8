"""What a run's git branch costs per phase: worktree, commit, publish, integrate.

    .venv/bin/python -m bench.worktrees [--files 10000] [--phases 40] [--concurrency 1,16]
        [--remote] [--json FILE]

A repository of ``--files`` files (100 per directory) is made once. Each simulated phase
does exactly the git work of a completed attempt, through the executor's own code: a
checkout of the accepted head from the pool (:class:`Worktrees`), one new file written,
the commit, and :meth:`Integrator.deliver` (publish under the attempt ref, post, rebase
and post again while the head moves, advance the branch). The post is an in-process
stand-in for the control plane's compare-and-swap of the accepted head (a lock and a
variable), so that the numbers are git's alone. ``--remote`` puts the branch in a bare
repository reached through a local cache clone, as executors on several machines do.

Reported per concurrency: wall time per phase (wall / phases: at concurrency 1 this is the
overhead one phase adds), p50/p95 of one phase's git time, and posts refused because the
head had moved (the executor's attempts take turns, so this stays near 0 in one process).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autopack.contract import ResultAnswer
from autopack.errors import BranchMoved
from autopack.executor.integration import Integrator
from autopack.executor.repository import RunRepository, run_branch
from autopack.executor.source import RepoSource
from autopack.executor.worktrees import Worktrees
from autopack.states import PhaseState, RunState


@dataclass(frozen=True)
class Attempt:
    run_id: str
    phase_id: str
    attempt: int


def make_repository(path: Path, files: int) -> None:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    for index in range(files):
        folder = path / f"d{index // 100:03d}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{index}.txt").write_text(f"file {index}\n" * 20)
    subprocess.run(["git", "add", "-A"], cwd=path, check=True)
    subprocess.run(
        ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "start"],
        cwd=path,
        check=True,
    )


class Acceptor:
    """The control plane's compare-and-swap of the accepted head, in one process."""

    def __init__(self, head: str) -> None:
        self.head = head
        self.refusals = 0
        self._lock = threading.Lock()

    def post(self, commit: str, base: str) -> ResultAnswer:
        with self._lock:
            if base != self.head:
                self.refusals += 1
                raise BranchMoved("moved", branch_head=self.head)
            self.head = commit
        return ResultAnswer(
            run_id="bench",
            phase_id="p",
            attempt=1,
            phase_state=PhaseState.COMPLETE,
            run_state=RunState.RUNNING,
            requeued=False,
            available_at=None,
            branch_head=commit,
        )


def phase(pool: Worktrees, integrator: Integrator, acceptor: Acceptor, index: int) -> float:
    """One completed phase's git work, in seconds."""
    started = time.perf_counter()
    attempt = Attempt("bench", f"p{index}", 1)
    with pool.checkout(acceptor.head, f"bench-{index}") as tree:
        (tree.path / "out").mkdir(exist_ok=True)
        (tree.path / f"out/p{index}.txt").write_text(f"phase {index}\n")
        tree.make_commit([f"out/p{index}.txt"], f"autopack: p{index}")
        integrator.deliver(
            attempt, tree, post=acceptor.post, needs_recheck=lambda _: False, recheck=lambda: None
        )
    return time.perf_counter() - started


def measure(source: RepoSource, cache: Path, phases: int, concurrency: int) -> dict[str, Any]:
    repository = RunRepository.open(
        source, branch=run_branch(f"bench-{concurrency}"), cache_dir=cache
    )
    pool = Worktrees(repository, cache / "worktrees", keep_failed_minutes=0)
    integrator = Integrator(repository)
    acceptor = Acceptor(repository.head())
    # Warm: one slot per thread exists before the clock starts (as in a running executor).
    warm = [pool.checkout(acceptor.head, f"warm-{n}") for n in range(concurrency)]
    for context in warm:
        context.__enter__()
    for context in reversed(warm):
        context.__exit__(None, None, None)
    times: list[float] = []
    lock = threading.Lock()
    indexes = iter(range(phases))

    def worker() -> None:
        while True:
            with lock:
                index = next(indexes, None)
            if index is None:
                return
            seconds = phase(pool, integrator, acceptor, index)
            with lock:
                times.append(seconds)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    pool.close()
    ordered = sorted(times)
    return {
        "concurrency": concurrency,
        "phases": phases,
        "wall_ms_per_phase": round(1000 * wall / phases, 1),
        "phase_p50_ms": round(1000 * statistics.median(ordered), 1),
        "phase_p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 1),
        "refused_posts_per_phase": round(acceptor.refusals / phases, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--phases", type=int, default=40)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--remote", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(f"# {platform.platform()}, Python {platform.python_version()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="autopack-bench-git-") as scratch:
        root = Path(scratch)
        make_repository(root / "project", args.files)
        source = RepoSource(workspace=root / "project")
        if args.remote:
            subprocess.run(
                ["git", "clone", "-q", "--bare", str(root / "project"), str(root / "remote.git")],
                check=True,
            )
            source = RepoSource(remote=str(root / "remote.git"))
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            row = measure(source, root / "cache", args.phases, concurrency)
            row.update(files=args.files, remote=args.remote)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
