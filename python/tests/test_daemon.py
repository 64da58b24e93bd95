"""batchd.Client against the real daemon: runs only when BATCHD_BIN names a
batchd binary (e.g. BATCHD_BIN=target/release/batchd). Tunes
examples/jobs/mlp-synthetic.toml, about a minute on CPU."""
import os
import shutil
import socket
import subprocess
import time

import pytest
from conftest import REPO

from batchd import Client, DaemonUnreachable, ProblemError, Recommendation

BIN = os.environ.get("BATCHD_BIN")
pytestmark = pytest.mark.skipif(not BIN, reason="set BATCHD_BIN to a batchd binary to run the daemon test")
JOB = "mlp-synthetic"
TOKEN = "python-client-test-token"

BAD_SPEC = """
name = "broken"
[model]
kind = "mlp"
input_size = 0
hidden = [128]
classes = 10
[data]
kind = "synthetic"
samples = 1000
[optimizer]
kind = "adamw"
[search]
min_batch = 8
max_batch = 4
"""

GOOD_SPEC = (REPO / "examples" / "jobs" / "mlp-synthetic.toml").read_text().replace(
    'name = "mlp-synthetic"', 'name = "submitted-job"')


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    root = tmp_path_factory.mktemp("daemon")
    jobs, state = root / "jobs", root / "state"
    jobs.mkdir()
    state.mkdir()
    os.chmod(jobs, 0o755)
    shutil.copy(REPO / "examples" / "jobs" / "mlp-synthetic.toml", jobs / "mlp-synthetic.toml")
    token = root / "token"
    token.write_text(TOKEN + "\n")
    os.chmod(token, 0o600)
    config = root / "batchd.toml"
    config.write_text(f'api_token_file = "{token}"\n')
    port = free_port()
    log = open(root / "daemon.log", "w")
    process = subprocess.Popen(
        [BIN, "serve", "--config", str(config), "--jobs-dir", str(jobs), "--state-dir", str(state),
         "--listen", f"127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    client = Client(f"http://127.0.0.1:{port}", token_file=str(token), timeout=10)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.request("GET", "/readyz")
            break
        except (DaemonUnreachable, ProblemError):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the daemon did not start: " + (root / "daemon.log").read_text()[-2000:]) from None
            time.sleep(0.2)
    yield client, root
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


@pytest.fixture(scope="module")
def tuned(daemon):
    client, _ = daemon
    return client.wait(JOB, timeout=600, poll=1.0)


def test_wait_returns_the_recommendation(daemon, tuned):
    client, _ = daemon
    assert isinstance(tuned, Recommendation)
    assert tuned.job == JOB and tuned.batch_size >= 8 and tuned.learning_rate > 0
    assert tuned.total_updates and tuned.warmup_steps >= 0
    assert any(job["name"] == JOB and job["state"] == "done" for job in client.jobs())
    assert client.job(JOB)["state"] == "done"


def test_recommendation_and_lr_rule_agree_with_the_daemon(daemon, tuned):
    client, _ = daemon
    rec = client.recommendation(JOB)
    assert rec.batch_size == tuned.batch_size and rec.learning_rate == tuned.learning_rate
    full = client.recommendation(JOB, evidence="full")
    assert full.batch_size == rec.batch_size
    for batch in (rec.effective_batch_size, 2 * rec.effective_batch_size, 17):
        assert client.lr_for(JOB, batch) == pytest.approx(rec.lr_for(batch), rel=1e-12)
    assert rec.lr_at(0) == pytest.approx(rec.learning_rate / max(rec.warmup_steps, 1), rel=1e-12)


def test_bad_spec_is_refused_with_its_fields(daemon, tuned):
    client, root = daemon
    path = root / "broken.toml"
    path.write_text(BAD_SPEC)
    with pytest.raises(ProblemError) as caught:
        client.submit(str(path))
    error = caught.value
    assert error.status == 422, error
    fields = [e["field"] for e in error.errors]
    assert any(f.startswith("model.input_size") for f in fields), fields
    assert all(e["message"] for e in error.errors)


def test_unknown_job_is_404(daemon):
    client, _ = daemon
    with pytest.raises(ProblemError) as caught:
        client.recommendation("no-such-job")
    assert caught.value.status == 404


def test_writes_need_the_token(daemon, tuned):
    client, _ = daemon
    anonymous = Client(client.url, token=None)
    anonymous.token = None
    with pytest.raises(ProblemError) as caught:
        anonymous.retune(JOB)
    assert caught.value.status == 401


def test_submit_retune_delete(daemon, tuned):
    client, root = daemon
    path = root / "submitted-job.toml"
    path.write_text(GOOD_SPEC)
    job = client.submit(str(path))
    assert job["name"] == "submitted-job"
    with pytest.raises(ProblemError) as caught:
        client.submit(str(path))
    assert caught.value.status == 409
    client.delete("submitted-job")
    with pytest.raises(ProblemError) as caught:
        client.job("submitted-job")
    assert caught.value.status == 404

    retuned = client.retune(JOB)
    assert retuned["name"] == JOB and retuned["state"] in ("queued", "running")
    client.delete(JOB)
    assert all(job["name"] != JOB for job in client.jobs())
