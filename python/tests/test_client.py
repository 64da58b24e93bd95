"""batchd.Client against a small in-process fake of the daemon's API."""
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from batchd import Client, DaemonUnreachable, JobFailed, ProblemError, Recommendation


class FakeDaemon:
    """Records every request; answers from `routes` ((method, path) -> handler)."""

    def __init__(self, recommendation):
        self.requests = []
        self.recommendation = recommendation
        self.polls = {}
        self.states = {}  # name -> list of states returned by successive GETs
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status, body=None, content_type="application/json"):
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                if body is not None:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _problem(self, status, title, detail, errors=None):
                body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
                if errors:
                    body["errors"] = errors
                self._answer(status, body, "application/problem+json")

            def _handle(self):
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fake.requests.append({
                    "method": self.command, "path": url.path, "raw_path": self.path,
                    "query": parse_qs(url.query), "headers": dict(self.headers), "body": body,
                })
                fake.route(self, self.command, url.path, parse_qs(url.query), body)

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def route(self, h, method, path, query, body):
        if method == "GET" and path == "/v1/jobs":
            return h._answer(200, {"jobs": [{"name": "a", "state": "done"}, {"name": "b/c d", "state": "queued"}]})
        if method == "POST" and path == "/v1/jobs":
            if b"bad" in body:
                return h._problem(422, "Invalid job spec", "the spec has 2 errors", [
                    {"field": "model.hidden[1]", "message": "must be > 0"},
                    {"field": "search.min_batch", "message": "must be a power of two"},
                ])
            return h._answer(201, {"name": "new", "state": "queued"})
        if path.startswith("/v1/jobs/"):
            rest = path[len("/v1/jobs/"):]
            name, _, tail = rest.partition("/")
            from urllib.parse import unquote
            name = unquote(name)
            if name == "missing":
                return h._problem(404, "Not found", f"no job `{name}`")
            if method == "GET" and tail == "":
                states = self.states.get(name, ["done"])
                count = self.polls.get(name, 0)
                self.polls[name] = count + 1
                state = states[min(count, len(states) - 1)]
                job = {"name": name, "state": state, "phase": "race" if state == "running" else None,
                       "errors": [], "error": "worker crashed" if state == "failed" else None}
                return h._answer(200, job)
            if method == "GET" and tail == "recommendation":
                if "batch_size" in query:
                    batch = int(query["batch_size"][0])
                    return h._answer(200, {"job": name, "batch_size": batch, "learning_rate": 0.001 * batch})
                return h._answer(200, dict(self.recommendation, job=name))
            if method == "POST" and tail == "retune":
                if h.headers.get("Authorization") != "Bearer s3cret":
                    return h._problem(401, "Unauthorized", "a bearer token is required")
                return h._answer(202, {"name": name, "state": "queued"})
            if method == "DELETE" and tail == "":
                return h._answer(204)
        return h._problem(404, "Not found", "no route")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def daemon(recommendation_data):
    fake = FakeDaemon(recommendation_data)
    yield fake
    fake.close()


def test_url_defaults(monkeypatch):
    monkeypatch.delenv("BATCHD_URL", raising=False)
    assert Client().url == "http://127.0.0.1:8477"
    monkeypatch.setenv("BATCHD_URL", "http://127.0.0.2:9000/")
    assert Client().url == "http://127.0.0.2:9000"
    assert Client("localhost:1234").url == "http://localhost:1234"


def test_token_file_from_the_environment(monkeypatch, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    monkeypatch.setenv("BATCHD_TOKEN_FILE", str(token))
    assert Client().token == "s3cret"
    assert Client(token="other").token == "other"
    token.write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        Client()


def test_jobs_and_job(daemon):
    client = Client(daemon.url)
    assert [j["name"] for j in client.jobs()] == ["a", "b/c d"]
    assert client.job("b/c d")["name"] == "b/c d"
    assert daemon.requests[-1]["raw_path"] == "/v1/jobs/b%2Fc%20d"  # the name is quoted whole


def test_recommendation(daemon, recommendation_data):
    client = Client(daemon.url)
    rec = client.recommendation("a")
    assert isinstance(rec, Recommendation)
    assert rec.batch_size == recommendation_data["batch_size"] and rec.job == "a"
    assert daemon.requests[-1]["query"] == {}
    client.recommendation("a", evidence="full")
    assert daemon.requests[-1]["query"] == {"evidence": ["full"]}
    with pytest.raises(ValueError):
        client.recommendation("a", evidence="some")


def test_lr_for(daemon):
    assert Client(daemon.url).lr_for("a", 256) == pytest.approx(0.256)
    assert daemon.requests[-1]["query"] == {"batch_size": ["256"]}
    assert daemon.requests[-1]["path"] == "/v1/jobs/a/recommendation"


def test_problem_json_becomes_problem_error(daemon):
    with pytest.raises(ProblemError) as caught:
        Client(daemon.url).job("missing")
    error = caught.value
    assert (error.status, error.title, error.type) == (404, "Not found", "about:blank")
    assert error.detail == "no job `missing`" and error.errors == []
    assert "404 Not found: no job `missing`" in str(error)


@pytest.mark.parametrize(
    "suffix, content_type",
    [(".toml", "application/toml"), (".json", "application/json"), (".yaml", "application/yaml"),
     (".yml", "application/yaml")],
)
def test_submit_content_types(daemon, tmp_path, suffix, content_type):
    spec = tmp_path / ("job" + suffix)
    spec.write_text('name = "new"\n')
    job = Client(daemon.url, token="s3cret").submit(str(spec))
    assert job == {"name": "new", "state": "queued"}
    request = daemon.requests[-1]
    assert request["method"] == "POST" and request["path"] == "/v1/jobs"
    assert request["headers"]["Content-Type"] == content_type
    assert request["headers"]["Authorization"] == "Bearer s3cret"
    assert request["body"] == b'name = "new"\n'


def test_submit_refuses_other_extensions(daemon, tmp_path):
    spec = tmp_path / "job.txt"
    spec.write_text("x")
    with pytest.raises(ValueError):
        Client(daemon.url).submit(str(spec))
    assert daemon.requests == []


def test_submit_validation_errors_carry_their_fields(daemon, tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text("bad = true\n")
    with pytest.raises(ProblemError) as caught:
        Client(daemon.url).submit(str(spec))
    error = caught.value
    assert error.status == 422 and error.title == "Invalid job spec"
    assert [e["field"] for e in error.errors] == ["model.hidden[1]", "search.min_batch"]
    assert "model.hidden[1]: must be > 0" in str(error)


def test_token_sent_on_post_and_delete_only(daemon):
    client = Client(daemon.url, token="s3cret")
    client.jobs()
    assert "Authorization" not in daemon.requests[-1]["headers"]
    assert client.retune("a") == {"name": "a", "state": "queued"}
    assert daemon.requests[-1]["headers"]["Authorization"] == "Bearer s3cret"
    assert client.delete("a") is None
    assert daemon.requests[-1]["method"] == "DELETE"
    assert daemon.requests[-1]["headers"]["Authorization"] == "Bearer s3cret"


def test_missing_token_gives_401(daemon):
    with pytest.raises(ProblemError) as caught:
        Client(daemon.url).retune("a")
    assert caught.value.status == 401


def test_wait_until_done(daemon, recommendation_data):
    daemon.states["j"] = ["queued", "running", "running", "done"]
    rec = Client(daemon.url).wait("j", poll=0.01)
    assert rec.effective_batch_size == recommendation_data["effective_batch_size"]
    assert daemon.polls["j"] == 4


@pytest.mark.parametrize("state", ["failed", "invalid"])
def test_wait_raises_job_failed(daemon, state):
    daemon.states["j"] = ["running", state]
    with pytest.raises(JobFailed) as caught:
        Client(daemon.url).wait("j", poll=0.01)
    assert caught.value.job["state"] == state
    assert "'j' is " + state in str(caught.value)


def test_wait_times_out(daemon):
    daemon.states["j"] = ["running"]
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="still running"):
        Client(daemon.url).wait("j", timeout=0.3, poll=0.05)
    assert time.monotonic() - started < 3


def test_unreachable_daemon():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client = Client(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(DaemonUnreachable) as caught:
        client.jobs()
    assert caught.value.url == f"http://127.0.0.1:{port}"
    assert "cannot be reached" in str(caught.value)


def test_non_json_error_body(daemon):
    """A proxy's HTML error page still gives a ProblemError with the status."""

    def route(h, *args):
        h.send_response(502)
        h.send_header("Content-Type", "text/html")
        h.end_headers()
        h.wfile.write(b"<html>Bad Gateway</html>")

    daemon.route = route
    with pytest.raises(ProblemError) as caught:
        Client(daemon.url).jobs()
    assert caught.value.status == 502 and "Bad Gateway" in caught.value.detail
