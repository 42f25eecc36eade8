"""Chaos drain: many executors, one PostgreSQL behind tokens, one shared remote branch.

Not a test (it takes minutes): a reproducible script for the operator's promise. It
creates a scratch PostgreSQL database, serves it with ``autopack serve --workers 2``
behind the operator and worker tokens, makes a bare git repository the run's
``repository:``, creates a run of N phases answered by a replay cassette (slowed down
with ``--replay-speed`` and a sleeping check so attempts take time) and drains it with E
executor processes, each with its own cache directory (a machine of its own). While it
drains, every 1-3 s at random: ``kill -9`` or SIGTERM an executor holding a lease,
SIGSTOP one past its lease then SIGCONT, ``kill -9`` the API server's process group
(restarted), SIGSTOP it for up to half a lease, ``pg_terminate_backend`` every
connection to the database, ``run requeue`` a phase that is executing (and, expecting a
4xx, a COMPLETE and an unknown one). Like a supervisor, it restarts every executor that
exits non-zero while its run has work (one that found no server for 10 s exits 2). A
second small run is drained by two executors and cancelled after three phases complete.
Then it checks, from the database and git, what the promise says (each phase COMPLETE
once, one commit per phase on the branch, every file at the head, no attempt twice, no
duplicated telemetry, nothing completed after the cancel, no 5xx, no traceback) and
prints the measurements as JSON; exit 1 if anything is wrong.

The clients (executors, operator) hold tokens, not the database's credentials: each is
told only ``AUTOPACK_API_URL`` and the database's ``AUTOPACK_EXPECTED_INSTANCE_ID``, which
the server must prove it serves. Executors run on ``--machines`` machines (3: a HOME, cache
and clone each, shared by that machine's executors). Before the drain, two misdirected
executors: one with a wrong token, one given the URL and worker token of a second server
over another database holding the same run; each must exit 2 naming the problem (both
databases) and write nothing there.

    .venv/bin/python scripts/chaos_drain.py [--phases 30] [--executors 8] [--seed 1]

Needs PostgreSQL with trust auth at 127.0.0.1:5432 (or AUTOPACK_TEST_POSTGRES_URL); the
scratch database is dropped at the end (``--keep`` keeps it and the directory).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import create_engine, make_url, text

REPO = Path(__file__).resolve().parent.parent
ADMIN = os.environ.get(
    "AUTOPACK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RUN, SMALL = "chaos-run", "chaos-cancel"
LEASE = 10
ACTIVE = ("EXECUTING", "CI_RUNNING")


def conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOPACK_", "DATABASE_"))}
    env.pop("TELEMETRY_DB_ENABLED", None)
    env.update(PYTHONPATH=str(REPO / "src"), **extra)
    return env


def answer(run_id: str, phase_id: str, body: str, latency_ms: float) -> dict[str, Any]:
    content = json.dumps({"files": [{"path": f"pkg/{phase_id}.py", "content": body}]})
    return {
        "match": {"run_id": run_id, "phase_id": phase_id, "attempt": 1, "role": "builder"},
        "provider": "anthropic",
        "model": "claude-sonnet-5-5",
        "latency_ms": latency_ms,
        "response": {
            "id": f"msg_{run_id}_{phase_id}",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-5-5",
            "content": [{"type": "text", "text": content}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 500, "output_tokens": 40},
        },
    }


def run_definition(run_id: str, count: int, remote: Path) -> dict[str, Any]:
    sleep = 'python -c "import time; time.sleep(3)"'
    phases = [
        {
            "phase_id": f"p{i:02d}",
            "name": f"p{i:02d}",
            "description": f"Write pkg/p{i:02d}.py.",
            "task_category": "implementation",
            "complexity": "low",
            "scope": {"paths": ["pkg/"], "deliverables": [f"pkg/p{i:02d}.py"]},
            "checks": [sleep] if i % 2 == 0 else [],
            "max_attempts": 20,
        }
        for i in range(count)
    ]
    half = count // 2
    return {
        "run_id": run_id,
        "repository": str(remote),
        "policy": {"retry_backoff_seconds": 0.0},
        "tiers": [
            {"tier_id": "T1", "name": "one", "phases": phases[:half]},
            {"tier_id": "T2", "name": "two", "phases": phases[half:]},
        ],
    }


def autopack(
    args: Sequence[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """One ``autopack`` CLI command, its output captured (an operator's, a decoy's)."""
    return subprocess.run(
        [sys.executable, "-m", "autopack", *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


class Chaos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.dir = Path(tempfile.mkdtemp(prefix="autopack-chaos-"))
        self.db = f"{args.db_prefix}{uuid.uuid4().hex[:10]}"
        self.url = make_url(ADMIN).set(database=self.db).render_as_string(hide_password=False)
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self.op_token = secrets.token_urlsafe(32)
        self.worker_token = secrets.token_urlsafe(32)
        self.remote = self.dir / "remote.git"
        self.server: subprocess.Popen[bytes] | None = None
        self.instance = ""  # the database's instance_id, once the server made it
        self.executors: dict[str, subprocess.Popen[bytes]] = {}
        self.exits: list[tuple[str, int]] = []
        self.events: Counter[str] = Counter()
        self.exit_notes: Counter[str] = Counter()
        self.log_start: dict[str, int] = {}
        self.cli_results: list[dict[str, Any]] = []
        self.engine = create_engine(self.url.replace("postgresql://", "postgresql+psycopg://"))

    # -- processes -------------------------------------------------------------------------
    def start_server(self) -> None:
        self.server = self.serve(self.url, self.port, self.op_token, self.worker_token, "server")

    def serve(
        self, url: str, port: int, op: str, worker: str, name: str
    ) -> subprocess.Popen[bytes]:
        """``autopack serve`` of ``url`` behind both tokens, once it accepts connections."""
        env = base_env(DATABASE_URL=url, AUTOPACK_API_TOKEN=op, AUTOPACK_WORKER_TOKEN=worker)
        log = (self.dir / f"{name}.log").open("ab")
        server = subprocess.Popen(
            [sys.executable, "-m", "autopack", "serve", "--port", str(port), "--workers", "2"],
            cwd=self.dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return server
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"the API server did not start; see {name}.log")

    def kill_server(self) -> None:
        assert self.server is not None
        os.killpg(self.server.pid, signal.SIGKILL)
        self.server.wait()

    def machine(self, name: str) -> Path:
        """The home directory of the machine an executor runs on: with ``--machines M``,
        executors share a machine's HOME (so its default cache, clone and worktrees),
        as several drains started on one host do; without, each has a cache of its own."""
        digits = name[1:]
        if not self.args.machines:
            number = name
        else:  # the misdirected executors (xtoken, xserver) run on the first machine
            number = str(int(digits) % self.args.machines if digits.isdigit() else 0)
        home = self.dir / f"machine-{number}"
        (home / "work").mkdir(parents=True, exist_ok=True)
        return home

    def start_executor(self, name: str, run_id: str, **wrong: str) -> None:
        """An executor of ``run_id`` on its machine; ``wrong`` overrides its settings (a
        misdirected one: another token, another server's URL)."""
        home = self.machine(name)
        settings = {
            "AUTOPACK_EXPECTED_INSTANCE_ID": self.instance,
            "AUTOPACK_API_URL": self.api,
            "AUTOPACK_WORKER_TOKEN": self.worker_token,
            "HOME": str(home),
            "TELEMETRY_DB_ENABLED": "1",
        }
        env = base_env(**{**settings, **wrong})
        env.pop("XDG_CACHE_HOME", None)
        path = self.dir / f"executor-{name}.log"
        self.log_start[name] = path.stat().st_size if path.exists() else 0
        log = path.open("ab")
        args = ["drain", "run", "--run-id", run_id, "--auditor", "rules", "-k", "2"]
        args += ["--cassette", str(self.dir / "cassette.jsonl"), "--replay-speed", self.args.speed]
        args += ["--lease-seconds", str(LEASE), "--worker-id", name, "--json"]
        self.executors[name] = subprocess.Popen(
            [sys.executable, "-m", "autopack", *args],
            cwd=home / "work",
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )

    def operator(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = base_env(
            AUTOPACK_EXPECTED_INSTANCE_ID=self.instance,
            AUTOPACK_API_URL=self.api,
            AUTOPACK_API_TOKEN=self.op_token,
        )
        done = autopack(args, env, self.dir / "work")
        self.cli_results.append(
            {"args": list(args), "rc": done.returncode, "stderr": done.stderr.strip()[-300:]}
        )
        return done

    # -- database --------------------------------------------------------------------------
    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        for _ in range(20):
            try:
                with self.engine.connect() as connection:
                    return [dict(r._mapping) for r in connection.execute(text(sql), params)]
            except Exception:  # our own connection may be one we terminated
                self.engine.dispose()
                time.sleep(0.2)
        raise RuntimeError(f"cannot read: {sql}")

    def run_state(self, run_id: str) -> str:
        return str(self.rows("SELECT state FROM runs WHERE id = :r", r=run_id)[0]["state"])

    def terminate_backends(self) -> int:
        with psycopg.connect(conninfo(ADMIN), autocommit=True) as conn:
            found = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.db,),
            ).fetchone()
        return int(found[0]) if found else 0

    # -- the scenario ----------------------------------------------------------------------
    def setup(self) -> None:
        with psycopg.connect(conninfo(ADMIN), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db}"')
        subprocess.run(["git", "init", "-q", "--bare", str(self.remote)], check=True)
        (self.dir / "work").mkdir()
        lines = [json.dumps({"cassette": {"repeat_last": True}})]
        for run_id, count in ((RUN, self.args.phases), (SMALL, 8)):
            body = run_definition(run_id, count, self.remote)
            (self.dir / f"{run_id}.json").write_text(json.dumps(body))
            for i in range(count):
                latency = 1500 + 250 * (i % 9)
                lines.append(json.dumps(answer(run_id, f"p{i:02d}", f"VALUE = {i}\n", latency)))
        (self.dir / "cassette.jsonl").write_text("\n".join(lines) + "\n")
        self.start_server()
        self.instance = str(self.rows("SELECT instance_id FROM db_meta")[0]["instance_id"])
        for run_id in (RUN, SMALL):
            created = self.operator("run", "create", str(self.dir / f"{run_id}.json"))
            assert created.returncode == 0, created.stderr

    def reap(self, restart: bool) -> None:
        for name, process in list(self.executors.items()):
            code = process.poll()
            if code is None:
                continue
            self.exits.append((name, code))
            with (self.dir / f"executor-{name}.log").open("rb") as file:
                file.seek(self.log_start[name])
                log = file.read().decode(errors="replace")
            said = [line for line in log.splitlines() if line.startswith("✘")]
            self.exit_notes[f"{code}: {said[-1][:90] if said else ''}"] += 1
            del self.executors[name]
            run_id = SMALL if name.startswith("c") else RUN
            # a supervisor restarts any executor while its run has work (one that gave up
            # on an unreachable server exits 2 saying "run the same command again")
            if restart and code != 0 and self.run_state(run_id) in ("QUEUED", "RUNNING"):
                self.start_executor(name, run_id)
                self.events["executor restarted"] += 1

    def holders(self, run_id: str) -> list[tuple[str, str]]:
        found = self.rows(
            "SELECT phase_id, lease_owner FROM phases WHERE run_id = :r AND state IN "
            "('EXECUTING', 'CI_RUNNING') AND lease_owner IS NOT NULL",
            r=run_id,
        )
        return [(r["phase_id"], str(r["lease_owner"]).split("/")[0]) for r in found]

    def act(self, stopped: dict[str, float]) -> None:
        choice = self.rng.choice(
            [
                *("kill", "kill", "kill", "term", "stop", "server", "hang"),
                *("backends", "backends", "requeue", "bad"),
            ]
        )
        holding = [h for h in self.holders(RUN) if h[1] in self.executors and h[1] not in stopped]
        if choice == "kill" and holding:
            _, name = self.rng.choice(holding)
            os.killpg(self.executors[name].pid, signal.SIGKILL)
            self.events["executor kill -9 mid-attempt"] += 1
        elif choice == "term" and holding:
            _, name = self.rng.choice(holding)
            self.executors[name].send_signal(signal.SIGTERM)
            self.events["executor SIGTERM mid-attempt"] += 1
        elif choice == "hang" and self.server is not None:
            os.killpg(self.server.pid, signal.SIGSTOP)
            time.sleep(self.rng.uniform(2, LEASE / 2))
            os.killpg(self.server.pid, signal.SIGCONT)
            self.events["api server SIGSTOP/SIGCONT"] += 1
        elif choice == "stop" and holding and not stopped:
            _, name = self.rng.choice(holding)
            os.killpg(self.executors[name].pid, signal.SIGSTOP)
            stopped[name] = time.monotonic() + LEASE * 2 + 2
            self.events["executor SIGSTOP past lease"] += 1
        elif choice == "server":
            self.kill_server()
            time.sleep(self.rng.uniform(0.5, 3))
            self.start_server()
            self.events["api server kill -9 + restart"] += 1
        elif choice == "backends":
            self.events["pg_terminate_backend rounds"] += 1
            self.events["pg backends terminated"] += self.terminate_backends()
        elif choice == "requeue":
            active = [p for p, _ in self.holders(RUN)]
            if active:
                target = self.rng.choice(active)
                done = self.operator("run", "requeue", RUN, target, "--reason", "chaos")
                self.events[f"requeue of an executing phase rc={done.returncode}"] += 1
        elif choice == "bad":
            complete = self.rows(
                "SELECT phase_id FROM phases WHERE run_id = :r AND state = 'COMPLETE'", r=RUN
            )
            if complete:
                done = self.operator("run", "requeue", RUN, complete[0]["phase_id"])
                self.events[f"requeue of a COMPLETE phase rc={done.returncode}"] += 1
            done = self.operator("run", "requeue", RUN, "no-such-phase")
            self.events[f"requeue of an unknown phase rc={done.returncode}"] += 1

    def misdirect(self) -> list[str]:
        """Executors given a wrong token, or the URL (and valid token) of another server
        over another database holding the same run: each must exit 2 naming the problem
        (both databases for the server), and write nothing anywhere."""
        problems: list[str] = []
        decoy_db = f"{self.db}_decoy"
        decoy_url = make_url(self.url).set(database=decoy_db).render_as_string(hide_password=False)
        with psycopg.connect(conninfo(ADMIN), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{decoy_db}"')
        op, worker, port = secrets.token_urlsafe(32), secrets.token_urlsafe(32), free_port()
        decoy = self.serve(decoy_url, port, op, worker, "decoy-server")
        try:
            env = base_env(AUTOPACK_API_URL=f"http://127.0.0.1:{port}", AUTOPACK_API_TOKEN=op)
            created = autopack(
                ("run", "create", str(self.dir / f"{RUN}.json")), env, self.dir / "work"
            )
            if created.returncode != 0:
                problems.append(f"decoy run not created: {created.stderr[-300:]}")
            wrong = {
                "xtoken": ({"AUTOPACK_WORKER_TOKEN": secrets.token_urlsafe(32)}, "Unauthorized"),
                "xserver": (
                    {
                        "AUTOPACK_API_URL": f"http://127.0.0.1:{port}",
                        "AUTOPACK_WORKER_TOKEN": worker,
                    },
                    "IdentityMismatch",
                ),
            }
            for name, (settings, expected) in wrong.items():
                self.start_executor(name, RUN, **settings)
                code = self.executors.pop(name).wait(timeout=120)
                said = (self.dir / f"executor-{name}.log").read_text(errors="replace")
                self.events[f"misdirected executor {name} rc={code}"] += 1
                if code != 2 or expected not in said:
                    problems.append(f"misdirected {name}: rc={code}, said {said[-300:]!r}")
                if name == "xserver" and (decoy_db not in said or self.instance not in said):
                    problems.append(f"misdirected {name} did not name both databases: {said!r}")
            decoy_engine = create_engine(
                decoy_url.replace("postgresql://", "postgresql+psycopg://")
            )
            with decoy_engine.connect() as connection:
                written = connection.execute(text("SELECT count(*) FROM phase_attempts")).scalar()
            decoy_engine.dispose()
            if written:
                problems.append(f"a misdirected executor drained the decoy: {written} attempts")
        finally:
            os.killpg(decoy.pid, signal.SIGKILL)
            decoy.wait()
            with psycopg.connect(conninfo(ADMIN), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{decoy_db}" WITH (FORCE)')
        return problems

    def drain(self) -> None:
        self.misdirected = self.misdirect()
        for n in range(self.args.executors):
            self.start_executor(f"e{n}", RUN)
        for n in range(2):
            self.start_executor(f"c{n}", SMALL)
        stopped: dict[str, float] = {}
        cancelled = False
        started = time.monotonic()
        while self.executors or stopped:
            time.sleep(self.rng.uniform(1.0, 3.0))
            for name, until in list(stopped.items()):
                if time.monotonic() >= until:
                    if name in self.executors:
                        os.killpg(self.executors[name].pid, signal.SIGCONT)
                    del stopped[name]
            self.reap(restart=True)
            if not cancelled:
                done = self.rows(
                    "SELECT count(*) AS n FROM phases WHERE run_id = :r AND state = 'COMPLETE'",
                    r=SMALL,
                )[0]["n"]
                if done >= 3:
                    result = self.operator("run", "cancel", SMALL, "--reason", "chaos")
                    self.events[f"cancel of {SMALL} rc={result.returncode}"] += 1
                    self.cancelled_after = int(done)
                    cancelled = True
            if self.run_state(RUN) in ("QUEUED", "RUNNING") and time.monotonic() - started < 900:
                self.act(stopped)
            elif time.monotonic() - started > 1200:
                raise SystemExit(f"not drained after 20 minutes: {self.executors}")
        self.seconds = round(time.monotonic() - started, 1)

    # -- the verdict -----------------------------------------------------------------------
    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=self.remote, check=True, capture_output=True, text=True
        ).stdout.strip()

    def verify(self) -> dict[str, Any]:
        problems: list[str] = []
        phases = self.rows("SELECT * FROM phases WHERE run_id = :r ORDER BY phase_id", r=RUN)
        attempts = self.rows("SELECT * FROM phase_attempts WHERE run_id = :r", r=RUN)
        branch = f"autopack/{RUN}"
        log = self.git("log", "--format=%H %s", branch).splitlines()
        on_branch = {line.split()[0] for line in log}
        commits = [line.split()[2] for line in log if line.split()[1:2] == ["autopack:"]]
        subjects = Counter(commits)
        head_files = set(self.git("ls-tree", "-r", "--name-only", branch).splitlines())
        complete = Counter(a["phase_id"] for a in attempts if a["outcome"] == "COMPLETE")
        by_phase = Counter(a["phase_id"] for a in attempts)
        for p in phases:
            pid = p["phase_id"]
            if p["state"] != "COMPLETE":
                problems.append(f"{pid} is {p['state']}")
            if complete[pid] != 1:
                problems.append(f"{pid} has {complete[pid]} COMPLETE attempts")
            if subjects[pid] != 1:
                problems.append(f"{pid} has {subjects[pid]} commits on the branch")
            if p["commit_sha"] not in on_branch:
                problems.append(f"{pid}'s commit {p['commit_sha']} is not on the branch")
            if f"pkg/{pid}.py" not in head_files:
                problems.append(f"pkg/{pid}.py missing from the branch head")
            numbers = [a["attempt"] for a in attempts if a["phase_id"] == pid]
            if not numbers or p["attempts"] != max(numbers) or len(numbers) != len(set(numbers)):
                problems.append(f"{pid}: attempts={p['attempts']} rows={by_phase[pid]}")
            wrong = [a for a in attempts if a["phase_id"] == pid and a["outcome"] == "COMPLETE"]
            if wrong and wrong[0]["commit_sha"] != p["commit_sha"]:
                problems.append(f"{pid}: attempt commit {wrong[0]['commit_sha']} != phase's")
        for path in sorted(head_files):
            pid = Path(path).stem
            expected = f"VALUE = {int(pid[1:])}\n"
            if self.git("show", f"{branch}:{path}") + "\n" != expected:
                problems.append(f"{path} on the branch is not {expected!r}")
        if len(commits) != len(phases) or len(log) != len(phases) + 1:
            problems.append(f"{len(log)} commits on the branch for {len(phases)} phases")
        keys = Counter((a["phase_id"], a["attempt"]) for a in attempts)
        problems += [f"attempt {k} recorded {n} times" for k, n in keys.items() if n > 1]
        usage = self.rows(
            "SELECT phase_id, attempt, role, count(*) AS n FROM llm_usage_events WHERE run_id = :r "
            "GROUP BY phase_id, attempt, role HAVING count(*) > 1",
            r=RUN,
        )
        problems += [f"llm_usage_events duplicated: {u}" for u in usage]
        estimates = self.rows(
            "SELECT phase_id, attempt, count(*) AS n FROM token_estimation_v2_events "
            "WHERE run_id = :r GROUP BY phase_id, attempt HAVING count(*) > 1",
            r=RUN,
        )
        problems += [f"token_estimation_v2_events duplicated: {e}" for e in estimates]
        small, small_log = self.verify_cancelled(problems)
        problems += self.verify_logs() + getattr(self, "misdirected", [])
        outcomes = Counter(a["outcome"] + "/" + str(a["stop_reason"]) for a in attempts)
        return {
            "phases": len(phases),
            "seconds": getattr(self, "seconds", None),
            "events": dict(self.events),
            "executor exits": dict(self.exit_notes),
            "attempt rows": len(attempts),
            "attempt outcomes": dict(outcomes),
            "branch commits": len(log),
            "llm_usage_events": self.rows(
                "SELECT count(*) AS n FROM llm_usage_events WHERE run_id = :r", r=RUN
            )[0]["n"],
            "small run": {
                "state": self.run_state(SMALL),
                "cancelled after": getattr(self, "cancelled_after", None),
                "phases": dict(Counter(p["state"] for p in small)),
                "branch commits": len(small_log),
            },
            "operator commands": Counter(
                f"{' '.join(c['args'][:2])} rc={c['rc']}: {c['stderr'].splitlines()[-1][:60]}"
                for c in self.cli_results
                if c["rc"] != 0
            ),
            "problems": problems,
        }

    def verify_cancelled(self, problems: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
        """The cancelled run: nothing completed after the cancel, each COMPLETE on its branch."""
        small = self.rows("SELECT * FROM phases WHERE run_id = :r", r=SMALL)
        small_log = [
            line.split()[0]
            for line in self.git("log", "--format=%H %s", f"autopack/{SMALL}").splitlines()
            if line.split()[1:2] == ["autopack:"]
        ]
        [cancelled] = self.rows("SELECT finished_at FROM runs WHERE id = :r", r=SMALL)
        for p in small:
            if p["state"] == "COMPLETE" and p["finished_at"] > cancelled["finished_at"]:
                problems.append(f"{SMALL}/{p['phase_id']} completed after the run was cancelled")
            if p["state"] == "COMPLETE" and p["commit_sha"] not in small_log:
                problems.append(
                    f"{SMALL}/{p['phase_id']} COMPLETE but its commit is not on the branch"
                )
        if len(small_log) != sum(p["state"] == "COMPLETE" for p in small):
            problems.append(
                f"{SMALL}: {len(small_log)} commits, phases {Counter(p['state'] for p in small)}"
            )
        return small, small_log

    def verify_logs(self) -> list[str]:
        """No 5xx in the server's access log, no traceback anywhere."""
        server_log = (self.dir / "server.log").read_text(errors="replace")
        fivexx = re.findall(r'" 5\d\d\b.*', server_log)
        problems = [f"server answered 5xx: {line}" for line in fivexx[:20]]
        tracebacks = {
            log.name: log.read_text(errors="replace").count("Traceback")
            for log in self.dir.glob("*.log")
        }
        return problems + [f"{name}: {n} tracebacks" for name, n in tracebacks.items() if n]

    def cleanup(self) -> None:
        for process in list(self.executors.values()):
            os.killpg(process.pid, signal.SIGCONT)
            os.killpg(process.pid, signal.SIGKILL)
        if self.server is not None and self.server.poll() is None:
            self.kill_server()
        self.engine.dispose()
        if not self.args.keep:
            with psycopg.connect(conninfo(ADMIN), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
            shutil.rmtree(self.dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", type=int, default=30)
    parser.add_argument("--executors", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--machines", type=int, default=3, help="machines (HOMEs) the executors share; 0: one each"
    )
    parser.add_argument("--db-prefix", default="autopack_chaos_", help="the scratch database's")
    parser.add_argument("--speed", default="3", help="--replay-speed of the executors")
    parser.add_argument("--keep", action="store_true", help="keep the database and directory")
    args = parser.parse_args()
    chaos = Chaos(args)
    print(f"directory {chaos.dir}, database {chaos.db}, api {chaos.api}", file=sys.stderr)
    try:
        chaos.setup()
        chaos.drain()
        report = chaos.verify()
    finally:
        chaos.cleanup()
    print(json.dumps(report, indent=2, default=str))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
