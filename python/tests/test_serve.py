"""Persistent trials (batchd._serve): a script offered BATCHD_CONTROL_FD runs
many trials in one process. Each test plays batchd's side over a socket
pair, with a script in a temporary folder run as a subprocess."""
import json
import math
import os
import select
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from conftest import PYTHON_DIR, REPO

import batchd
from batchd import _serve
from batchd.trial import noise_steps

SCHEDULE = json.dumps({"kind": "constant", "lr": 0.05})
PERSISTENT_PY = REPO / "tests" / "command" / "persistent.py"


def base_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}
    env["PYTHONPATH"] = str(PYTHON_DIR)
    env.update(extra)
    return env


class Batchd:
    """batchd's end of the control socket, and the script's stderr."""

    def __init__(self, argv: List[str], env: Dict[str, str], cwd: Optional[Path] = None, offer: bool = True):
        self.sock, child = socket.socketpair()
        self.fd = child.fileno()
        env = dict(env, FD_NUMBER=str(self.fd))
        if offer:
            env["BATCHD_CONTROL_FD"] = str(self.fd)
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, pass_fds=[self.fd], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        child.close()
        self.buffer = b""
        self.err = b""
        self.err_fd = self.proc.stderr.fileno()
        os.set_blocking(self.err_fd, False)

    def drain(self) -> str:
        """Everything the script has written to stderr so far."""
        while True:
            try:
                chunk = os.read(self.err_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.err += chunk
        return self.err.decode()

    def receive(self, timeout: float = 30) -> Optional[Dict[str, Any]]:
        """The script's next message, None at EOF."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            assert left > 0, "no message from the script; stderr:\n" + self.drain()
            ready, _, _ = select.select([self.sock, self.err_fd], [], [], left)
            if self.err_fd in ready:
                self.drain()
            if self.sock in ready:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return None
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def send(self, message: Dict[str, Any]) -> None:
        self.sock.sendall((json.dumps(message) + "\n").encode())

    def trial(self, number: int, env: Dict[str, Optional[str]]) -> None:
        self.send({"op": "trial", "trial": number, "env": env})

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        self.drain()
        return code

    def close(self) -> None:
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stderr.close()


@pytest.fixture
def started(tmp_path):
    made: List[Batchd] = []

    def start(*args: Any, **kwargs: Any) -> Batchd:
        made.append(Batchd(*args, **kwargs))
        return made[-1]

    yield start
    for one in made:
        one.close()


def trial_vars(tmp_path: Path, k: int, **overrides: Optional[str]) -> Dict[str, Optional[str]]:
    """The per-trial variables of trial k, with a fresh report file."""
    report = tmp_path / f"report-{k}.jsonl"
    report.write_text("")
    env: Dict[str, Optional[str]] = {
        "BATCHD_BATCH_SIZE": "16",
        "BATCHD_STEPS": "4",
        "BATCHD_WARMUP_STEPS": "1",
        "BATCHD_SEED": "1",
        "BATCHD_LR_SCHEDULE": SCHEDULE,
        "BATCHD_REPORT": str(report),
    }
    env.update(overrides)
    return env


def report(tmp_path: Path, k: int) -> List[Dict[str, Any]]:
    text = (tmp_path / f"report-{k}.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def first_env(tmp_path: Path, **overrides: Optional[str]) -> Dict[str, str]:
    env = base_env(LOG_FILE=str(tmp_path / "log.jsonl"), LOADS_FILE=str(tmp_path / "loads.txt"))
    env.update({k: v for k, v in trial_vars(tmp_path, 1, **overrides).items() if v is not None})
    return env


def log(tmp_path: Path) -> List[Dict[str, Any]]:
    path = tmp_path / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


MAIN = textwrap.dedent('''
    import json, os, subprocess, sys
    import batchd
    from batchd import _serve
    from batchd.trial import Trial

    @batchd.cache
    def load(n):
        with open(os.environ["LOADS_FILE"], "a") as f:
            f.write("load\\n")
        return list(range(n))

    data = load(5)
    held_before_trial = ["made before Trial()"]
    mode = os.environ.get("MODE", "train")
    if mode == "setup-error":
        raise ValueError("boom in setup")
    trial = Trial()
    probe = ("import os, sys; fd = sys.argv[1]; "
             "print(os.environ.get('BATCHD_CONTROL_FD'), "
             "os.readlink('/proc/self/fd/' + fd).startswith('socket:') "
             "if os.path.exists('/proc/self/fd/' + fd) else False)")
    child = subprocess.run([sys.executable, "-c", probe, os.environ["FD_NUMBER"]],
                           capture_output=True, text=True, close_fds=False)
    record = {
        "pid": os.getpid(), "batch": trial.batch_size, "seed": trial.seed,
        "extra": os.environ.get("EXTRA"), "control": os.environ.get("BATCHD_CONTROL_FD"),
        "serving": _serve.serving(), "name": __name__, "data": data,
        "original": sorted(k for k in (_serve._original_main or {}) if not k.startswith("__")),
        "noise": [s for s in range(trial.steps) if trial.measure_noise(s)],
        "child": child.stdout.split(),
    }
    with open(os.environ["LOG_FILE"], "a") as f:
        f.write(json.dumps(record) + "\\n")
    print("stderr of the trial at batch", trial.batch_size, file=sys.stderr)
    for step in range(trial.steps):
        if mode == "exit3" and step == 2:
            raise SystemExit(3)
        if mode == "train-error" and step == 1:
            raise ValueError("boom in training")
        trial.report(step, 1.0 / (step + 1))
    if mode == "exit-text":
        sys.exit("bye")
    if mode == "interrupt":
        raise KeyboardInterrupt
''')


@pytest.fixture
def main_py(tmp_path: Path) -> Path:
    path = tmp_path / "main.py"
    path.write_text(MAIN)
    return path


def test_trials_in_one_process_with_the_environment_of_each(tmp_path, main_py, started):
    b = started([sys.executable, str(main_py)], first_env(tmp_path, EXTRA="first"))
    hello = b.receive()
    assert hello == {"event": "hello", "protocol": 1, "pid": b.proc.pid}
    done = b.receive()
    assert done["event"] == "trial_done" and done["trial"] == 1
    assert (done["exit"], done["stage"], done["cuda"]) == (0, "train", None)
    assert done["threads"] >= 1
    b.trial(2, trial_vars(tmp_path, 2, BATCHD_BATCH_SIZE="32", BATCHD_SEED="7", EXTRA="second"))
    assert b.receive()["trial"] == 2
    b.trial(3, trial_vars(tmp_path, 3, BATCHD_BATCH_SIZE="8", EXTRA=None))
    done = b.receive()
    assert (done["trial"], done["exit"], done["stage"]) == (3, 0, "train")
    b.send({"op": "exit"})
    assert b.wait(10) == 0
    records = log(tmp_path)
    assert [r["pid"] for r in records] == [b.proc.pid] * 3
    assert [(r["batch"], r["seed"], r["extra"]) for r in records] == [(16, 1, "first"), (32, 7, "second"),
                                                                      (8, 1, None)]
    assert all(r["serving"] and r["name"] == "__main__" and r["control"] is None for r in records)
    # The script's children never see the variable, nor inherit the socket.
    assert all(r["child"] == ["None", "False"] for r in records)
    # What the abandoned first run made before Trial() was dropped.
    assert all(r["original"] == [] for r in records)
    for k in (1, 2, 3):
        assert [line["step"] for line in report(tmp_path, k)] == [0, 1, 2, 3]
    assert [line["samples"] for line in report(tmp_path, 2)] == [32] * 4


def test_report_and_stderr_are_complete_before_trial_done(tmp_path, main_py, started):
    b = started([sys.executable, str(main_py)], first_env(tmp_path, BATCHD_STEPS="3"))
    assert b.receive()["event"] == "hello"
    for k in (1, 2):
        if k == 2:
            b.trial(2, trial_vars(tmp_path, 2, BATCHD_STEPS="5", BATCHD_BATCH_SIZE="64"))
        done = b.receive()
        assert done["trial"] == k
        # Read at once, as batchd does on trial_done: already written.
        assert len(report(tmp_path, k)) == (3 if k == 1 else 5)
        err = b.drain()
        own = "stderr of the trial at batch " + ("16" if k == 1 else "64")
        assert own in err and f"batchd-trial-done {k}\n" in err
        assert err.index(own) < err.index(f"batchd-trial-done {k}")
    b.send({"op": "exit"})
    assert b.wait(10) == 0


def test_eof_ends_the_process_promptly(tmp_path, main_py, started):
    b = started([sys.executable, str(main_py)], first_env(tmp_path))
    assert b.receive()["event"] == "hello"
    assert b.receive()["trial"] == 1
    began = time.monotonic()
    b.sock.shutdown(socket.SHUT_WR)
    assert b.wait(10) == 0
    assert time.monotonic() - began < 3


@pytest.mark.parametrize("line", [b"not json\n", b'{"op":"trial","trial":3,"env":{}}\n',
                                  b'{"op":"trial","trial":2,"env":{"X":1}}\n', b"x" * 70000 + b"\n"])
def test_protocol_errors_exit_2(tmp_path, main_py, started, line):
    b = started([sys.executable, str(main_py)], first_env(tmp_path))
    assert b.receive()["event"] == "hello"
    assert b.receive()["trial"] == 1
    b.sock.sendall(line)
    assert b.wait(10) == 2
    assert "protocol error" in b.err.decode()


def test_unknown_fields_are_ignored(tmp_path, main_py, started):
    b = started([sys.executable, str(main_py)], first_env(tmp_path))
    assert b.receive()["event"] == "hello"
    assert b.receive()["trial"] == 1
    b.send({"op": "trial", "trial": 2, "env": trial_vars(tmp_path, 2), "deadline": 12, "new": {"x": 1}})
    assert b.receive()["exit"] == 0
    b.send({"op": "exit", "why": "done"})
    assert b.wait(10) == 0


@pytest.mark.parametrize(
    "mode, status, stage, err",
    [
        ("exit3", 3, "train", None),
        ("train-error", 1, "train", "ValueError: boom in training"),
        ("setup-error", 1, "setup", "ValueError: boom in setup"),
        ("exit-text", 1, "train", "bye"),
        ("interrupt", 130, "train", "KeyboardInterrupt"),
    ],
)
def test_exit_status_and_stage(tmp_path, main_py, started, mode, status, stage, err):
    b = started([sys.executable, str(main_py)], first_env(tmp_path))
    assert b.receive()["event"] == "hello"
    assert b.receive()["exit"] == 0
    b.drain()
    b.err = b""
    b.trial(2, trial_vars(tmp_path, 2, MODE=mode))
    done = b.receive()
    assert (done["trial"], done["exit"], done["stage"]) == (2, status, stage)
    text = b.drain()
    if err is not None:
        before_sentinel = text[: text.index("batchd-trial-done 2")]
        assert before_sentinel.rstrip("\n").splitlines()[-1] == err
    if mode.endswith("error") or mode == "interrupt":
        assert "Traceback (most recent call last):" in text
        # As Python prints it for a script: from the script's own frame.
        assert f'File "{main_py}"' in text and "runpy" not in text and "_serve" not in text
    if mode == "exit3":
        assert len(report(tmp_path, 2)) == 2  # the steps before the exit, flushed
    # The loop goes on; batchd decides whether to use the process again.
    b.trial(3, trial_vars(tmp_path, 3, MODE=None))
    assert b.receive()["exit"] == 0
    b.send({"op": "exit"})
    assert b.wait(10) == 0


def test_run_as_a_module(tmp_path, started):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("runs = []\n")
    (package / "main.py").write_text(textwrap.dedent('''
        import json, os, sys
        import pkg
        from batchd.trial import Trial
        trial = Trial()
        pkg.runs.append(trial.batch_size)
        with open(os.environ["LOG_FILE"], "a") as f:
            f.write(json.dumps({"name": __name__, "spec": __spec__.name, "runs": pkg.runs,
                                "argv0": sys.argv[0]}) + "\\n")
        for step in range(trial.steps):
            trial.report(step, 1.0)
    '''))
    b = started([sys.executable, "-m", "pkg.main"], first_env(tmp_path), cwd=tmp_path)
    assert b.receive()["event"] == "hello"
    assert b.receive()["exit"] == 0
    b.trial(2, trial_vars(tmp_path, 2, BATCHD_BATCH_SIZE="48"))
    assert b.receive()["exit"] == 0
    b.send({"op": "exit"})
    assert b.wait(10) == 0
    records = log(tmp_path)
    assert [(r["name"], r["spec"]) for r in records] == [("__main__", "pkg.main")] * 2
    assert records[-1]["runs"] == [16, 48]  # pkg imported once, its state kept
    assert records[-1]["argv0"] == str(package / "main.py")
    assert len(report(tmp_path, 2)) == 4


def test_no_takeover_without_the_variable(tmp_path, main_py, started):
    b = started([sys.executable, str(main_py)], first_env(tmp_path), offer=False)
    assert b.wait(30) == 0
    (record,) = log(tmp_path)
    assert record["serving"] is False and record["original"] == []
    assert len(report(tmp_path, 1)) == 4
    assert b.receive(5) is None  # nothing was sent: EOF once the process is gone


def test_no_takeover_when_trial_is_given_an_environment(tmp_path, started):
    script = tmp_path / "given.py"
    script.write_text(textwrap.dedent('''
        import os
        from batchd.trial import Trial
        trial = Trial(dict(os.environ))
        assert os.environ.get("BATCHD_CONTROL_FD") == os.environ["FD_NUMBER"]
        for step in range(trial.steps):
            trial.report(step, 1.0)
    '''))
    b = started([sys.executable, str(script)], first_env(tmp_path))
    assert b.receive() is None  # EOF: no hello, the process ran its one trial
    assert b.wait(10) == 0, b.err.decode()
    assert len(report(tmp_path, 1)) == 4


def test_declined_without_a_main_file(tmp_path, started):
    code = textwrap.dedent('''
        import os
        from batchd.trial import Trial
        fd = os.environ["FD_NUMBER"]
        trial = Trial()
        assert "BATCHD_CONTROL_FD" not in os.environ
        assert not os.path.exists("/proc/self/fd/" + fd)  # closed
        for step in range(trial.steps):
            trial.report(step, 1.0)
    ''')
    b = started([sys.executable, "-c", code], first_env(tmp_path))
    assert b.receive() is None
    assert b.wait(10) == 0, b.err.decode()
    assert len(report(tmp_path, 1)) == 4


def test_cache_memoizes_only_in_a_persistent_process(tmp_path, main_py, started):
    b = started([sys.executable, str(main_py)], first_env(tmp_path))
    assert b.receive()["event"] == "hello"
    assert b.receive()["exit"] == 0
    for k in (2, 3):
        b.trial(k, trial_vars(tmp_path, k))
        assert b.receive()["exit"] == 0
    b.send({"op": "exit"})
    assert b.wait(10) == 0
    # Loaded once: by the original run, which had the offer; reused by all three trials.
    assert (tmp_path / "loads.txt").read_text() == "load\n"
    assert [r["data"] for r in log(tmp_path)] == [[0, 1, 2, 3, 4]] * 3
    # Without the offer: a plain call each time.
    b = started([sys.executable, str(main_py)], first_env(tmp_path), offer=False)
    assert b.wait(30) == 0
    assert (tmp_path / "loads.txt").read_text() == "load\n" * 2


def test_cache_in_process_is_a_plain_call_when_not_serving(monkeypatch):
    monkeypatch.delenv("BATCHD_CONTROL_FD", raising=False)
    calls = []

    @batchd.cache
    def load(n, scale=1):
        calls.append((n, scale))
        return [n * scale]

    assert load(2) == [2] and load(2) == [2] and calls == [(2, 1), (2, 1)]
    monkeypatch.setattr(_serve, "_serving", True)
    monkeypatch.setattr(_serve, "_cache", {})
    calls.clear()
    assert load(2, scale=3) == load(2, scale=3) == [6] and calls == [(2, 3)]
    assert load(3) == [3] and calls == [(2, 3), (3, 1)]
    assert load.__name__ == "load"
    unhashable = batchd.cache(lambda xs: calls.append("called") or len(xs))
    assert unhashable([1]) == unhashable([1]) == 1 and calls.count("called") == 2


def test_noise_steps_spread_from_the_given_step(tmp_path, main_py, started):
    noise = dict(BATCHD_GRAD_NOISE_SMALL_BATCH="4", BATCHD_GRAD_NOISE_MEASUREMENTS="3")
    b = started([sys.executable, str(main_py)],
                first_env(tmp_path, BATCHD_STEPS="20", BATCHD_GRAD_NOISE_FROM="10", **noise))
    assert b.receive()["event"] == "hello"
    assert b.receive()["exit"] == 0
    # The next trial drops FROM (null): the last m steps, as before.
    b.trial(2, trial_vars(tmp_path, 2, BATCHD_STEPS="20", BATCHD_GRAD_NOISE_FROM=None, **noise))
    assert b.receive()["exit"] == 0
    b.send({"op": "exit"})
    assert b.wait(10) == 0
    assert [r["noise"] for r in log(tmp_path)] == [[11, 15, 18], [17, 18, 19]]


def test_noise_steps_formula():
    # h + floor((i + 1/2) (steps - h) / m)
    assert noise_steps(100, 5, 4, 50) == {56, 68, 81, 93}
    assert noise_steps(30, 2, 7, 15) == {16, 18, 20, 22, 24, 26, 28}
    # Integer arithmetic, the same as the formula in floating point.
    for steps in range(1, 60):
        for start in range(0, steps + 2, 3):
            for m in range(1, 25):
                spread = {start + math.floor((i + 0.5) * (steps - start) / m) for i in range(m)}
                if start >= steps:
                    spread = set(range(steps - m, steps))
                assert noise_steps(steps, 1, m, start) == {x for x in spread if 1 <= x < steps}
    # Deduplicated, never in the warm-up nor past the end.
    assert noise_steps(10, 0, 20, 8) == {8, 9}
    assert noise_steps(10, 6, 4, 0) == {6, 8}
    assert noise_steps(10, 0, 3, 10) == {7, 8, 9}  # FROM past the end: the last m, as batchd does
    assert noise_steps(10, 0, 0, 4) == set()
    # Without FROM: the last m after warm-up; without m: every step after warm-up (and FROM).
    assert noise_steps(10, 2, 3, None) == {7, 8, 9}
    assert noise_steps(10, 2, None, None) is None
    assert noise_steps(10, 2, None, 5) == {5, 6, 7, 8, 9}


# --- tests/command/persistent.py, the script batchd's own tests drive -----------


def persistent_env(tmp_path: Path, **extra: str) -> Dict[str, str]:
    env = base_env(PIDS_FILE=str(tmp_path / "pids.txt"), **extra)
    env.update({k: v for k, v in trial_vars(tmp_path, 1).items() if v is not None})
    return env


def pids(tmp_path: Path) -> List[List[int]]:
    return [[int(x) for x in line.split()] for line in (tmp_path / "pids.txt").read_text().splitlines()]


def test_persistent_py_one_trial_per_process(tmp_path):
    env = persistent_env(tmp_path, BYTES_PER_SAMPLE="1024")
    env.update(BATCHD_GRAD_NOISE_SMALL_BATCH="4", BATCHD_GRAD_NOISE_MEASUREMENTS="2", BATCHD_VALIDATE="1")
    done = subprocess.run([sys.executable, str(PERSISTENT_PY), "--marker=x"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = report(tmp_path, 1)
    assert [line["step"] for line in lines] == [0, 1, 2, 3]
    assert [line["step"] for line in lines if "grad_norm_sq_small" in line] == [2, 3]
    assert "val_loss" in lines[-1] and lines[-1]["loss"] < lines[0]["loss"]
    (pid, seed, batch), = pids(tmp_path)
    assert (seed, batch) == (1, 16)
    for seed, status, last in ((13, 1, "ValueError: boom at step 1"), (14, 3, "MemoryError: out of memory")):
        env.update(BATCHD_SEED=str(seed))
        done = subprocess.run([sys.executable, str(PERSISTENT_PY)], env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == status and done.stderr.strip().splitlines()[-1] == last
    env.update(BATCHD_SEED="16")
    open(env["BATCHD_REPORT"], "w").close()
    done = subprocess.run([sys.executable, str(PERSISTENT_PY)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0
    assert [line["loss"] is None for line in report(tmp_path, 1)] == [False, False, True, True]
    # REEXEC_FAIL's side effect runs once per process here: no failure.
    for how in ("1", "2"):
        done = subprocess.run([sys.executable, str(PERSISTENT_PY)], env=dict(env, BATCHD_SEED="1", REEXEC_FAIL=how),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr


def test_persistent_py_serves_each_kind_of_trial(tmp_path, started):
    b = started([sys.executable, str(PERSISTENT_PY), "--marker=y"], persistent_env(tmp_path, LEAK_MB="64"))
    assert b.receive()["event"] == "hello"
    outcomes = []
    plan = [("1", "16"), ("13", "16"), ("2", "64"), ("14", "16"), ("16", "16"), ("1", "16")]
    for k, (seed, batch) in enumerate(plan, start=1):
        if k > 1:
            b.trial(k, trial_vars(tmp_path, k, BATCHD_SEED=seed, BATCHD_BATCH_SIZE=batch))
        done = b.receive()
        assert done["trial"] == k
        outcomes.append((done["exit"], done["stage"]))
    b.send({"op": "exit"})
    assert b.wait(10) == 0
    assert outcomes == [(0, "train"), (1, "train"), (0, "train"), (3, "train"), (0, "train"), (0, "train")]
    err = b.err.decode()
    assert "ValueError: boom at step 1\nbatchd-trial-done 2\n" in err
    assert "MemoryError: out of memory\nbatchd-trial-done 4\n" in err
    assert {p for p, _, _ in pids(tmp_path)} == {b.proc.pid}
    assert [(s, n) for _, s, n in pids(tmp_path)] == [(int(s), int(n)) for s, n in plan]
    # Equal (seed, batch): equal first loss, as in a fresh process; NaN from step 2 for seed 16.
    assert report(tmp_path, 1)[0]["loss"] == report(tmp_path, 6)[0]["loss"]
    assert report(tmp_path, 1)[0]["loss"] != report(tmp_path, 3)[0]["loss"]
    assert [line["loss"] is None for line in report(tmp_path, 5)] == [False, False, True, True]


def test_persistent_py_leak_survives_the_rerun(tmp_path, started):
    b = started([sys.executable, str(PERSISTENT_PY)], persistent_env(tmp_path, LEAK_MB="100"))
    assert b.receive()["event"] == "hello"
    rss = []
    for k in (1, 2, 3):
        if k > 1:
            b.trial(k, trial_vars(tmp_path, k))
        assert b.receive()["exit"] == 0
        status = Path(f"/proc/{b.proc.pid}/status").read_text()
        rss.append(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) >> 10)
    b.send({"op": "exit"})
    assert b.wait(10) == 0
    assert rss[1] - rss[0] >= 90 and rss[2] - rss[1] >= 90, rss


@pytest.mark.parametrize("how, failing", [("1", 1), ("2", 2)])
def test_persistent_py_reexec_failure(tmp_path, started, how, failing):
    b = started([sys.executable, str(PERSISTENT_PY)], persistent_env(tmp_path, REEXEC_FAIL=how))
    assert b.receive()["event"] == "hello"
    for k in range(1, failing + 1):
        if k > 1:
            b.trial(k, trial_vars(tmp_path, k))
        done = b.receive()
    assert (done["trial"], done["exit"], done["stage"]) == (failing, 1, "setup")
    assert "RuntimeError: context has already been set" in b.drain()
    b.send({"op": "exit"})
    assert b.wait(10) == 0


def test_persistent_py_hang_holds_the_trial(tmp_path, started):
    marker = f"--marker=hang-{os.getpid()}-{tmp_path.name}"
    b = started([sys.executable, str(PERSISTENT_PY), marker], persistent_env(tmp_path))
    assert b.receive()["event"] == "hello"
    assert b.receive()["exit"] == 0
    b.trial(2, trial_vars(tmp_path, 2, BATCHD_SEED="15"))
    ready, _, _ = select.select([b.sock], [], [], 1.5)
    assert not ready  # no trial_done: it hangs (batchd's deadline ends it)
    b.proc.kill()
    b.proc.wait()
    # Its child (sleep) holds no copy of the socket: batchd sees EOF at once.
    assert b.receive(5) is None
    children = [entry.name for entry in Path("/proc").iterdir() if entry.name.isdigit()
                and marker in _cmdline(entry)]
    for pid in children:
        os.kill(int(pid), 9)
    assert children, "the hanging trial's child was not started"


def _cmdline(entry: Path) -> str:
    try:
        return (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_the_pytorch_example_in_one_process(tmp_path, started):
    """examples/pytorch/train.py served persistently: the seed gives the
    same first loss as in a fresh process, and each trial its own."""
    pytest.importorskip("torch")
    folder = REPO / "examples" / "pytorch"
    common = dict(BATCHD_STEPS="3", BATCHD_WARMUP_STEPS="1", BATCHD_GRAD_NOISE_SMALL_BATCH="8",
                  BATCHD_GRAD_NOISE_MEASUREMENTS="2", BATCHD_PRECISION="bf16", BATCHD_BATCH_SIZE="32")
    env = base_env(HIDDEN="64", PYTHONPATH="../../python")
    env.update({k: v for k, v in trial_vars(tmp_path, 1, **common).items() if v is not None})
    b = started([sys.executable, "train.py"], env, cwd=folder)
    assert b.receive()["event"] == "hello"
    plan = [("1", "32"), ("2", "64"), ("1", "32")]
    for k, (seed, batch) in enumerate(plan, start=1):
        if k > 1:
            b.trial(k, trial_vars(tmp_path, k, BATCHD_SEED=seed, **dict(common, BATCHD_BATCH_SIZE=batch)))
        done = b.receive(120)
        assert (done["trial"], done["exit"], done["stage"], done["cuda"]) == (k, 0, "train", None), b.drain()
    b.send({"op": "exit"})
    assert b.wait(30) == 0
    first = [report(tmp_path, k)[0]["loss"] for k in (1, 2, 3)]
    assert first[0] == first[2] != first[1]
    assert [line["step"] for line in report(tmp_path, 2) if "grad_norm_sq" in line] == [1, 2]
    # A fresh process with seed 1 starts from the same loss.
    fresh = dict(env, BATCHD_REPORT=str(tmp_path / "fresh.jsonl"))
    fresh.pop("BATCHD_CONTROL_FD", None)
    done = subprocess.run([sys.executable, "train.py"], cwd=folder, env=fresh, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "fresh.jsonl").read_text().splitlines()[0])["loss"] == first[0]


class FakeCuda:
    """torch.cuda's memory calls, recorded (for the clean-up's order)."""

    def __init__(self, initialized: bool):
        self.initialized = initialized
        self.calls: List[str] = []
        self.reserved = 100

    def is_initialized(self) -> bool:
        self.calls.append("is_initialized")
        return self.initialized

    def is_available(self) -> bool:
        self.calls.append("is_available")
        return True

    def reset_peak_memory_stats(self) -> None:
        self.calls.append("reset")

    def synchronize(self) -> None:
        self.calls.append("synchronize")

    def max_memory_reserved(self) -> int:
        self.calls.append("max_reserved")
        return 100

    def max_memory_allocated(self) -> int:
        self.calls.append("max_allocated")
        return 80

    def empty_cache(self) -> None:
        self.calls.append("empty_cache")
        self.reserved = 10

    def memory_reserved(self) -> int:
        self.calls.append("reserved")
        return self.reserved


def test_cuda_peaks_reset_and_figures_after_the_clean_up(monkeypatch):
    import types

    cuda = FakeCuda(initialized=True)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    _serve._reset_peaks()
    assert cuda.calls[-1] == "reset"
    cuda.calls.clear()
    figures = _serve._clean_up()
    assert figures == {"max_reserved": 100, "max_allocated": 80, "reserved_idle": 10}
    assert cuda.calls == ["is_initialized", "is_available", "synchronize", "max_reserved", "max_allocated",
                          "empty_cache", "reserved"]
    # CUDA never started in this process: nothing is asked of it (not even is_available).
    cuda = FakeCuda(initialized=False)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    _serve._reset_peaks()
    assert _serve._clean_up() is None
    assert cuda.calls == ["is_initialized", "is_initialized"]
    monkeypatch.delitem(sys.modules, "torch")
    assert _serve._clean_up() is None


def test_a_script_that_no_longer_compiles(tmp_path, main_py, started):
    b = started([sys.executable, str(main_py)], first_env(tmp_path))
    assert b.receive()["event"] == "hello"
    assert b.receive()["exit"] == 0
    main_py.write_text("def broken(:\n")  # edited between trials
    b.drain()
    b.err = b""
    b.trial(2, trial_vars(tmp_path, 2))
    done = b.receive()
    assert (done["exit"], done["stage"]) == (1, "setup")
    text = b.drain()
    assert "SyntaxError" in text and "runpy" not in text and "Traceback" not in text
    b.send({"op": "exit"})
    assert b.wait(10) == 0
