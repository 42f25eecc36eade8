"""A remote's first clone on a machine: shown as it goes, never cut off by a fixed deadline
while git is still at work, and never leaving half a clone in the cache.

The remote that never answers is a real TCP server speaking nothing: git connects with
``git://`` and waits, as it waits on a host that has stopped sending mid-clone.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autopack.executor.git import GitError, git_with_progress
from tests.executor_support import (
    cassette,
    create_run,
    drain,
    drain_process,
    env_for,
    files,
    line,
    on_branch,
    phase,
    run_file,
)

RUN = "exec-run"


class SilentRemote:
    """A ``git://`` server that accepts connections and never says a word."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"git://127.0.0.1:{self._listener.getsockname()[1]}/project.git"
        self.connected = threading.Event()
        self.hung_up = threading.Event()
        """The first connection came, and ended (its git was stopped)."""
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed
                return
            self.connections += 1
            first = self.connections == 1
            threading.Thread(target=self._hold, args=(connection, first), daemon=True).start()

    def _hold(self, connection: socket.socket, first: bool) -> None:
        with connection:
            if first:
                self.connected.set()
            while connection.recv(4096):  # git's request, then nothing until it hangs up
                pass
            if first:
                self.hung_up.set()

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def silent_remote() -> Iterator[SilentRemote]:
    remote = SilentRemote()
    yield remote
    remote.close()


def test_git_silent_for_the_limit_is_given_up_and_stopped(
    silent_remote: SilentRemote, tmp_path: Path
) -> None:
    shown = Shown()
    with pytest.raises(GitError, match=r"nothing from git for 0\.5 s"):
        git_with_progress(
            "clone", "--bare", "--progress", "--", silent_remote.url, str(tmp_path / "c.git"),
            cwd=tmp_path, shown=shown, silent_seconds=0.5,
        )  # fmt: skip
    assert silent_remote.hung_up.wait(10), "git was left running"
    assert any("Cloning into bare repository" in line for line in shown.told), shown.told


class Shown:
    """git's progress as it was shown."""

    def __init__(self) -> None:
        self.told: list[str] = []
        self.updates: list[str] = []

    def update(self, line: str) -> None:
        self.updates.append(line)

    def tell(self, line: str) -> None:
        self.told.append(line)


def test_a_first_clone_is_shown_and_a_later_drain_clones_nothing(tmp_path: Path) -> None:
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    env = env_for(f"sqlite:///{tmp_path / 'autopack.db'}", AUTOPACK_CACHE_DIR=str(tmp_path / "c"))
    create_run(
        run_file(tmp_path, [phase("p1", ["pkg/a.py"]), phase("p2", ["pkg/b.py"])]), env, tmp_path
    )
    tape = cassette(
        tmp_path, [line("p1", 1, files(a_py="A = 1\n")), line("p2", 1, files(b_py="B = 1\n"))]
    )
    args = ["phase", "--run-id", RUN, "--auditor", "rules", "--cassette", str(tape)]
    args += ["--repo", remote.as_uri()]
    first = drain(*args, "--phase-id", "p1", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    said = " ".join(first.stderr.split())
    assert f"cloning {remote.as_uri()} into this machine's cache" in said, said[-3000:]
    assert f"cloned {remote.as_uri()} in " in said, said[-3000:]
    second = drain(*args, "--phase-id", "p2", env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "cloning" not in second.stderr and "cloned" not in second.stderr
    assert on_branch(remote, "pkg/a.py") == "A = 1\n" and on_branch(remote, "pkg/b.py") == "B = 1\n"


def test_a_clone_removes_nothing_of_a_cache_it_did_not_make(tmp_path: Path) -> None:
    """The sweep of half clones removed every ``repos/*.git.*`` of the cache directory:
    ``AUTOPACK_CACHE_DIR`` set to a directory of one's own lost its ``repos/mine.git.bak``
    (a copy of a bare repository) to the first clone of a remote."""
    cache = tmp_path / "cache"
    mine = cache / "repos" / "mine.git.bak"
    subprocess.run(["git", "init", "-q", "--bare", str(mine)], check=True)
    (cache / "repos" / "notes.git.txt").write_text("mine\n")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    env = env_for(f"sqlite:///{tmp_path / 'autopack.db'}", AUTOPACK_CACHE_DIR=str(cache))
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(a_py="A = 1\n"))])
    args = ["phase", "--run-id", RUN, "--phase-id", "p1", "--auditor", "rules"]
    done = drain(*args, "--cassette", str(tape), "--repo", remote.as_uri(), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (mine / "HEAD").is_file(), "the cache's own bare repository was removed"
    assert (cache / "repos" / "notes.git.txt").read_text() == "mine\n"


def test_a_drain_stopped_mid_clone_leaves_no_half_clone_in_the_cache(
    silent_remote: SilentRemote, tmp_path: Path
) -> None:
    """SIGTERM while git received the remote: git was killed where it stood and its half
    of the clone stayed in ``CACHE/repos`` for good, one more for every stopped drain."""
    cache = tmp_path / "cache"
    env = env_for(f"sqlite:///{tmp_path / 'autopack.db'}", AUTOPACK_CACHE_DIR=str(cache))
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(a_py="A = 1\n"))])
    args = ["run", "--run-id", RUN, "--auditor", "rules", "--cassette", str(tape)]
    running = drain_process(*args, "--repo", silent_remote.url, env=env, cwd=tmp_path)
    assert silent_remote.connected.wait(120), "the drain never started its clone"
    assert [p.name for p in (cache / "repos").iterdir()] != [], "the clone has its directory"
    running.send_signal(signal.SIGTERM)
    _, stderr = running.communicate(timeout=60)
    assert running.returncode != 0, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert list((cache / "repos").iterdir()) == [], "half a clone stayed in the cache"
    assert silent_remote.hung_up.wait(10), "git was left running"


def test_a_half_clone_of_a_killed_drain_is_removed_and_one_in_progress_kept(
    tmp_path: Path,
) -> None:
    """A drain killed mid-clone (SIGKILL: no way out runs) left its half of the clone in
    ``CACHE/repos`` for good. The next clone on the machine removes it, and leaves the
    clone another drain is still receiving."""
    cache = tmp_path / "cache"
    env = env_for(f"sqlite:///{tmp_path / 'autopack.db'}", AUTOPACK_CACHE_DIR=str(cache))
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(a_py="A = 1\n"))])
    args = ["phase", "--run-id", RUN, "--phase-id", "p1", "--auditor", "rules"]
    args += ["--cassette", str(tape)]
    cloning, killed = SilentRemote(), SilentRemote()
    try:
        still = drain_process(*args, "--repo", cloning.url, env=env, cwd=tmp_path)
        assert cloning.connected.wait(120), "the first drain never started its clone"
        stopped = drain_process(*args, "--repo", killed.url, env=env, cwd=tmp_path)
        assert killed.connected.wait(120), "the second drain never started its clone"
        stopped.kill()
        stopped.communicate(timeout=60)
        assert len(list((cache / "repos").iterdir())) == 4, "two half clones, two markers"
        remote = tmp_path / "remote.git"
        subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
        done = drain(*args, "--repo", remote.as_uri(), env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        left = sorted(p.name for p in (cache / "repos").iterdir())
        assert len(left) == 3, left  # the finished clone, the one in progress and its marker
        assert still.poll() is None, "the drain still cloning was disturbed"
        still.send_signal(signal.SIGTERM)
        still.communicate(timeout=60)
        finished = [name for name in left if name.endswith(".git")]
        assert [p.name for p in (cache / "repos").iterdir()] == finished, left
    finally:
        cloning.close()
        killed.close()


def test_a_drain_waits_for_the_clone_another_is_making_instead_of_cloning_again(
    silent_remote: SilentRemote, tmp_path: Path
) -> None:
    """Executors started together on a machine each cloned the run's remote, and all but
    one clone were thrown away. One waits for the other's clone now, and clones itself
    only once that one is gone (here: its drain stopped)."""
    env = env_for(f"sqlite:///{tmp_path / 'autopack.db'}", AUTOPACK_CACHE_DIR=str(tmp_path / "c"))
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(a_py="A = 1\n"))])
    args = ["run", "--run-id", RUN, "--auditor", "rules", "--cassette", str(tape)]
    first = drain_process(*args, "--repo", silent_remote.url, env=env, cwd=tmp_path)
    assert silent_remote.connected.wait(120), "the first drain never started its clone"
    second = drain_process(*args, "--repo", silent_remote.url, env=env, cwd=tmp_path)
    said: list[str] = []
    stream = second.stderr
    assert stream is not None
    threading.Thread(target=lambda: said.extend(stream), daemon=True).start()
    deadline = time.monotonic() + 120
    while not any("waiting for that clone" in line for line in said):
        assert second.poll() is None and time.monotonic() < deadline, "".join(said)[-3000:]
        time.sleep(0.05)
    assert silent_remote.connections == 1, "the second drain cloned beside the first"
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    while silent_remote.connections < 2:  # the first clone gone: the second makes its own
        assert second.poll() is None and time.monotonic() < deadline, "".join(said)[-3000:]
        time.sleep(0.05)
    second.send_signal(signal.SIGTERM)
    second.wait(timeout=60)
