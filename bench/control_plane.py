"""Control plane throughput: claim -> heartbeat -> result round trips per second.

    .venv/bin/python -m bench.control_plane [--backends sqlite,postgresql] [--workers 1,4,16]
        [--phases-per-worker 150] [--uvicorn-workers 1] [--pg-url URL] [--json FILE]
        [--db-layer] [--floor] [--api-url URL]

For each backend a fresh database and a real ``uvicorn autopack.main:app`` server are
started; for each worker count a run with ``workers * phases-per-worker`` phases (one
tier, no dependencies) is drained by that many worker *processes* (each one
``ApiClient``: claim with run_id, one heartbeat, result with an Idempotency-Key). Workers
start together behind a barrier, so process start-up is not measured. Reported: completed
phases per second (wall clock, first claim to last result) and p50/p99 latency of the
claim call as the worker sees it (HTTP round trip included), plus heartbeat and result.

Processes, not threads: on a 2-core machine client CPU competes with the server and the
database, which is the honest situation for co-located executors; threads would hide
the clients' cost behind the GIL of one process.

``--api-url URL`` drives a server that is already running, typically on another machine
(``autopack serve --host 0.0.0.0 --workers N`` next to PostgreSQL), with the workers
here: the scale-out the design intends, where the executors' CPU is not the server's.
``--floor`` drains :mod:`bench.floor_app`, the API's wire shape with no database: the
ceiling of the HTTP stack itself on this machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy.engine import make_url

from autopack.client import ApiClient
from autopack.contract import ClaimIn, HeartbeatIn, ResultIn
from autopack.rundef import parse_run_definition
from autopack.states import PhaseState

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def _worker(
    url: str, run_id: str, worker_id: str, ready: Barrier, go: Barrier, results: Any
) -> None:  # pragma: no cover - runs in a child process
    claims: list[float] = []
    beats: list[float] = []
    posts: list[float] = []
    done = 0
    with ApiClient(url) as client:
        client.health()  # connected and warm before the clock starts
        ready.wait()
        go.wait()
        cpu_start = time.process_time()
        request = ClaimIn(worker_id=worker_id, lease_seconds=60, run_id=run_id)
        while True:
            start = time.perf_counter()
            claim = client.claim(request)
            claims.append(time.perf_counter() - start)
            if claim is None:
                break
            phase_id, token = claim.phase_id, claim.lease_token
            start = time.perf_counter()
            client.heartbeat(run_id, phase_id, HeartbeatIn(lease_token=token, lease_seconds=60))
            beats.append(time.perf_counter() - start)
            start = time.perf_counter()
            client.post_result(
                run_id,
                phase_id,
                ResultIn(lease_token=token, outcome=PhaseState.COMPLETE, stop_reason="done"),
                idempotency_key=claim.idempotency_key,
            )
            posts.append(time.perf_counter() - start)
            done += 1
        cpu = time.process_time() - cpu_start
    results.put(
        {
            "done": done,
            "claims": claims,
            "beats": beats,
            "posts": posts,
            "end": time.time(),
            "cpu": cpu,
        }
    )


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each of these processes (Linux /proc)."""
    used = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / _TICK
    return used


def _process_cpu(pids: list[int]) -> float:
    return sum(_cpu_by_pid(pids).values())


def _machine_cpu() -> float:
    """Busy CPU seconds of the whole machine so far (all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / _TICK


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def _postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class _Server:
    def __init__(
        self,
        database_url: str,
        workdir: Path,
        uvicorn_workers: int,
        app: str = "autopack.main:app",
        **extra_env: str,
    ) -> None:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPACK_")}
        env.update(DATABASE_URL=database_url, PYTHONPATH=f"{REPO / 'src'}:{REPO}", **extra_env)
        env["AUTOPACK_LOG_LEVEL"] = "WARNING"
        self.log = (workdir / f"uvicorn-{port}.log").open("w")
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        if uvicorn_workers > 1:
            command += ["--workers", str(uvicorn_workers)]
        self.process = subprocess.Popen(
            command, env=env, cwd=workdir, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start: see {self.log.name}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def measure(url: str, workers: int, phases: int, server_pids: list[int] | None) -> dict[str, Any]:
    """Drain one fresh run of ``phases`` phases with ``workers`` processes.

    ``server_pids`` None: the server (and its database) run on another machine, so only
    this machine's CPU is measured; the server and postgres columns are None.
    """
    local = server_pids is not None
    run_id = f"bench-{workers}w-{uuid.uuid4().hex[:6]}"
    definition = {
        "run_id": run_id,
        "budgets": {"token_cap": None, "cost_cap_usd": None, "max_duration_minutes": None},
        "tiers": [
            {
                "tier_id": "T1",
                "name": "bench",
                "phases": [{"phase_id": f"p{i:05d}", "name": f"p{i}"} for i in range(phases)],
            }
        ],
    }
    with ApiClient(url) as client:
        client.create_run(parse_run_definition(definition))
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(workers + 1)
    go = context.Barrier(workers + 1)
    results = context.Queue()
    processes = [
        context.Process(target=_worker, args=(url, run_id, f"w{i}", ready, go, results))
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    ready.wait(timeout=300)  # every worker imported, connected and asked /health once
    pg_before = _cpu_by_pid(_postgres_pids()) if local else {}
    server_cpu, machine_cpu = _process_cpu(server_pids or []), _machine_cpu()
    started = time.time()
    go.wait()
    reports = [results.get(timeout=600) for _ in processes]
    server_cpu = _process_cpu(server_pids or []) - server_cpu
    # Backends the server's pool opened during the run count in full; ones that exited
    # meanwhile are missed.
    pg_after = _cpu_by_pid(_postgres_pids()) if local else {}
    pg_cpu = sum(used - pg_before.get(pid, 0.0) for pid, used in pg_after.items())
    machine_cpu = _machine_cpu() - machine_cpu
    for process in processes:
        process.join(timeout=60)
    wall = max(report["end"] for report in reports) - started
    done = sum(report["done"] for report in reports)
    claims = [x for report in reports for x in report["claims"]]
    beats = [x for report in reports for x in report["beats"]]
    posts = [x for report in reports for x in report["posts"]]
    with ApiClient(url) as client:
        run = client.get_run(run_id)
    assert done == phases and run.state == "DONE_SUCCESS", (done, run.state)
    client_cpu = sum(report["cpu"] for report in reports)
    return {
        "workers": workers,
        "phases": done,
        "seconds": round(wall, 3),
        "phases_per_second": round(done / wall, 1),
        "claim_p50_ms": round(_percentile(claims, 0.50) * 1000, 2),
        "claim_p99_ms": round(_percentile(claims, 0.99) * 1000, 2),
        "claim_mean_ms": round(statistics.fmean(claims) * 1000, 2),
        "heartbeat_p50_ms": round(_percentile(beats, 0.50) * 1000, 2),
        "result_p50_ms": round(_percentile(posts, 0.50) * 1000, 2),
        "result_p99_ms": round(_percentile(posts, 0.99) * 1000, 2),
        "cpu_ms_per_phase": {
            "server": round(server_cpu / done * 1000, 2) if local else None,
            "clients": round(client_cpu / done * 1000, 2),
            "postgres": round(pg_cpu / done * 1000, 2) if local else None,
            "rest": round((machine_cpu - server_cpu - client_cpu - pg_cpu) / done * 1000, 2),
            "machine_busy_pct": round(machine_cpu / wall / (os.cpu_count() or 1) * 100),
        },
    }


def measure_db_layer(database_url: str, workers: int, phases: int) -> dict[str, Any]:
    """The same loop without HTTP: threads calling :mod:`autopack.control` in this process.

    Shows what the control plane's transactions cost by themselves (the ceiling an API
    process could reach with free HTTP), next to the end-to-end numbers above.
    """
    import threading

    from autopack.control import claims as claiming
    from autopack.control import leases, results, runs
    from autopack.db import open_database
    from autopack.dburl import resolve_database_url

    database = open_database(
        resolve_database_url(database_url), role="bench", log=False, create=True
    )
    run_id = f"db-{workers}w-{uuid.uuid4().hex[:6]}"
    runs.create_run(
        database,
        parse_run_definition(
            {
                "run_id": run_id,
                "tiers": [
                    {
                        "tier_id": "T1",
                        "name": "bench",
                        "phases": [{"phase_id": f"p{i:05d}", "name": "p"} for i in range(phases)],
                    }
                ],
            }
        ),
    )
    claims: list[float] = []
    done = [0]
    lock = threading.Lock()

    def loop(worker: str) -> None:
        request = ClaimIn(worker_id=worker, lease_seconds=60, run_id=run_id)
        while True:
            start = time.perf_counter()
            claim = claiming.claim(database, request)
            elapsed = time.perf_counter() - start
            with lock:
                claims.append(elapsed)
            if claim is None:
                return
            phase_id, token = claim.phase_id, claim.lease_token
            beat = HeartbeatIn(lease_token=token, lease_seconds=60)
            leases.heartbeat(database, run_id, phase_id, beat)
            results.post_result(
                database,
                run_id,
                phase_id,
                ResultIn(lease_token=token, outcome=PhaseState.COMPLETE, stop_reason="done"),
                idempotency_key=claim.idempotency_key,
            )
            with lock:
                done[0] += 1

    threads = [threading.Thread(target=loop, args=(f"w{i}",)) for i in range(workers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    database.close()
    assert done[0] == phases
    return {
        "workers": workers,
        "phases": phases,
        "phases_per_second": round(phases / wall, 1),
        "claim_p50_ms": round(_percentile(claims, 0.50) * 1000, 2),
        "claim_p99_ms": round(_percentile(claims, 0.99) * 1000, 2),
    }


def _pg_database(admin_url: str) -> tuple[str, str]:
    name = f"autopack_bench_{uuid.uuid4().hex[:8]}"
    conninfo = make_url(admin_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(False), name


def _drop_pg(admin_url: str, name: str) -> None:
    conninfo = make_url(admin_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_backend(
    backend: str,
    workers: list[int],
    per_worker: int,
    uvicorn_workers: int,
    pg_url: str,
    *,
    db_layer: bool = False,
) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="autopack-bench-") as tmp:
        workdir = Path(tmp)
        pg_name = None
        if backend == "sqlite":
            (workdir / "bench.db").touch()  # empty: the server initialises, never creates
            url = f"sqlite:///{workdir / 'bench.db'}"
        else:
            url, pg_name = _pg_database(pg_url)
        server = _Server(url, workdir, uvicorn_workers)
        try:
            if db_layer:
                for count in workers:
                    row = measure_db_layer(url, count, count * per_worker)
                    row.update(backend=backend, layer="db")
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            for count in workers:
                pids = [server.process.pid, *_children(server.process.pid)]
                row = measure(server.url, count, count * per_worker, pids)
                row.update(backend=backend, uvicorn_workers=uvicorn_workers)
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            server.stop()
            if pg_name:
                _drop_pg(pg_url, pg_name)
    return rows


def run_floor(workers: list[int], per_worker: int) -> list[dict[str, Any]]:
    """The same drain against :mod:`bench.floor_app` (no database): the stack's ceiling,
    answering on the event loop and hopping to the thread pool like the real endpoints."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="autopack-floor-") as tmp:
        for mode, threadpool in (("floor", "0"), ("floor+threads", "1")):
            server = _Server(
                "none",
                Path(tmp),
                1,
                app="bench.floor_app:app",
                AUTOPACK_FLOOR_THREADPOOL=threadpool,
            )
            try:
                for count in workers:
                    row = measure(server.url, count, count * per_worker, [server.process.pid])
                    row.update(backend=mode, uvicorn_workers=1)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                server.stop()
    return rows


def run_remote(api_url: str, workers: list[int], per_worker: int) -> list[dict[str, Any]]:
    """The same drain against a server that runs elsewhere (executors on this machine,
    API and database on others: the design's scale-out). Its runs stay in its database."""
    with ApiClient(api_url) as client:
        database = client.health().database
    rows = []
    for count in workers:
        row = measure(api_url, count, count * per_worker, None)
        row.update(backend=f"{database.backend} at {api_url}", uvicorn_workers="?")
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _ms(value: float | None) -> str:
    return "–" if value is None else str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| backend | server procs | workers | phases | phases/s | claim p50 ms | "
        "claim p99 ms | heartbeat p50 ms | result p50 ms | result p99 ms | "
        "CPU ms/phase: server / clients / postgres / rest | machine busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("layer") == "db":
            continue
        cpu = r["cpu_ms_per_phase"]
        lines.append(
            f"| {r['backend']} | {r['uvicorn_workers']} | {r['workers']} | {r['phases']} | "
            f"{r['phases_per_second']} | {r['claim_p50_ms']} | {r['claim_p99_ms']} | "
            f"{r['heartbeat_p50_ms']} | {r['result_p50_ms']} | {r['result_p99_ms']} | "
            f"{_ms(cpu['server'])} / {cpu['clients']} / {_ms(cpu['postgres'])} / {cpu['rest']} | "
            f"{cpu['machine_busy_pct']}% |"
        )
    db_rows = [r for r in rows if r.get("layer") == "db"]
    if db_rows:
        lines += [
            "",
            "Database layer alone (threads in one process calling autopack.db.work, no HTTP):",
            "",
            "| backend | threads | phases | phases/s | claim p50 ms | claim p99 ms |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['backend']} | {r['workers']} | {r['phases']} | {r['phases_per_second']} | "
            f"{r['claim_p50_ms']} | {r['claim_p99_ms']} |"
            for r in db_rows
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="local servers to start ('' for none)"
    )
    parser.add_argument(
        "--api-url",
        help="also drive this running server (e.g. on another machine) from here",
    )
    parser.add_argument("--workers", default="1,4,16")
    parser.add_argument("--phases-per-worker", type=int, default=150)
    parser.add_argument("--uvicorn-workers", default="1", help="comma list, e.g. 1,2")
    parser.add_argument("--pg-url", default=DEFAULT_PG)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument(
        "--db-layer", action="store_true", help="also measure the db layer without HTTP"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also drain bench.floor_app (the API's wire shape, no database): the ceiling",
    )
    args = parser.parse_args(argv)
    workers = [int(x) for x in args.workers.split(",")]
    print(
        f"# {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    for uvicorn_workers in (int(x) for x in args.uvicorn_workers.split(",")):
        for backend in filter(None, args.backends.split(",")):
            rows += run_backend(
                backend,
                workers,
                args.phases_per_worker,
                uvicorn_workers,
                args.pg_url,
                db_layer=args.db_layer and uvicorn_workers == 1,
            )
    if args.api_url:
        rows += run_remote(args.api_url, workers, args.phases_per_worker)
    if args.floor:
        rows += run_floor(workers, args.phases_per_worker)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
