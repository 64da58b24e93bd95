"""batchd.Client against a small in-process fake of the daemon's API."""
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from batchd import Client, DaemonUnreachable, JobFailed, ProblemError, Recommendation
from batchd import client as client_module
from batchd.client import BatchdError, TokenError


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
    with pytest.raises(TokenError, match="empty"):
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


# Redirects, proxies, limits, malformed answers, token files --------------------


def raw_route(payload, close=True):
    """A route that writes `payload` (bytes) as the whole answer, status line included."""

    def route(h, *args):
        h.wfile.write(payload)
        h.wfile.flush()
        if close:
            h.close_connection = True

    return route


def json_route(status, data, headers=()):
    def route(h, *args):
        h.send_response(status)
        for name, value in headers:
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    return route


@pytest.fixture
def target(recommendation_data):
    fake = FakeDaemon(recommendation_data)
    yield fake
    fake.close()


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirects_are_not_followed(daemon, target, code):
    daemon.route = json_route(code, b"", [("Location", target.url + "/v1/jobs")])
    client = Client(daemon.url, token="s3cret")
    with pytest.raises(ProblemError) as caught:
        client.retune("a")
    assert caught.value.status == code
    assert "redirects are not followed" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    with pytest.raises(ProblemError):
        client.jobs()
    assert target.requests == []  # the token went nowhere else, nor did a GET
    assert len(daemon.requests) == 2


def test_environment_proxies_are_ignored(daemon, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = "http://127.0.0.1:%d" % s.getsockname()[1]
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, dead)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    client = Client(daemon.url, token="s3cret", timeout=5)
    assert [j["name"] for j in client.jobs()] == ["a", "b/c d"]
    assert client.retune("a")["state"] == "queued"
    assert daemon.requests[-1]["raw_path"] == "/v1/jobs/a/retune"  # direct, not a proxy's absolute URL


def test_explicit_proxy_is_used(daemon):
    # The fake answers a proxy's absolute-URL request as it would a direct one.
    client = Client("http://batchd.invalid:1", proxy=daemon.url, timeout=5)
    assert [j["name"] for j in client.jobs()] == ["a", "b/c d"]
    assert daemon.requests[-1]["raw_path"] == "http://batchd.invalid:1/v1/jobs"


def test_oversized_answer_is_refused(daemon, monkeypatch):
    monkeypatch.setattr(client_module, "MAX_BODY", 1001)
    body = json.dumps({"jobs": [], "pad": "x" * 2000}).encode()
    daemon.route = json_route(200, body)
    with pytest.raises(BatchdError, match="larger than 1000 bytes"):
        Client(daemon.url).jobs()
    exactly = json.dumps({"jobs": [], "pad": ""}).encode()
    exactly = exactly.replace(b'""', b'"' + b"x" * (1000 - len(exactly)) + b'"')
    assert len(exactly) == 1000
    daemon.route = json_route(200, exactly)
    assert Client(daemon.url).jobs() == []
    daemon.route = json_route(500, body)
    with pytest.raises(BatchdError, match="larger than 1000 bytes"):
        Client(daemon.url).jobs()


def test_oversized_answer_of_the_real_limit(daemon):
    """More than 64 MiB, sent without a Content-Length: read no further than the limit."""

    def route(h, *args):
        h.send_response(200)
        h.end_headers()
        chunk = b" " * (1 << 20)
        try:
            for _ in range(80):
                h.wfile.write(chunk)
        except OSError:
            pass  # the client stopped reading

    daemon.route = route
    with pytest.raises(BatchdError, match="larger than 67108864 bytes"):
        Client(daemon.url, timeout=20).jobs()


@pytest.mark.parametrize("body", [b"<html>hello</html>", b"\xff\xfe{}", b"[" * 100000, b'{"jobs": '])
def test_non_json_success_is_a_batchd_error(daemon, body):
    daemon.route = json_route(200, body)
    with pytest.raises(BatchdError, match="not JSON") as caught:
        Client(daemon.url).jobs()
    assert not isinstance(caught.value, (ProblemError, DaemonUnreachable))


@pytest.mark.parametrize("answer", [[], {"jobs": 5}, {"jobs": None}, "jobs", 3])
def test_wrongly_shaped_answers_are_batchd_errors(daemon, answer):
    daemon.route = json_route(200, json.dumps(answer).encode())
    client = Client(daemon.url)
    with pytest.raises(BatchdError):
        client.jobs()
    if not isinstance(answer, dict):
        with pytest.raises(BatchdError):
            client.job("a")
        with pytest.raises(BatchdError):
            client.recommendation("a")
    with pytest.raises(BatchdError):
        client.lr_for("a", 8)


@pytest.mark.parametrize(
    "problem",
    [
        {"status": None, "title": None, "detail": None, "type": None, "errors": [1]},
        {"status": "abc", "title": 5, "errors": "not a list"},
        {"status": True, "errors": [None, "x", {"field": None, "message": 7}, {"field": "a.b", "message": "bad"}]},
        {"status": 99999, "errors": {"field": "x"}},
    ],
)
def test_malformed_problem_fields(daemon, problem):
    daemon.route = json_route(422, json.dumps(problem).encode(), [("Content-Type", "application/problem+json")])
    with pytest.raises(ProblemError) as caught:
        Client(daemon.url).jobs()
    error = caught.value
    assert error.status == 422
    assert all(isinstance(e["field"], str) and isinstance(e["message"], str) for e in error.errors)
    str(error)  # no TypeError/AttributeError


def test_job_failed_with_odd_errors():
    error = JobFailed({"name": "j", "state": "invalid", "errors": [1, {"field": "x", "message": "m"}]})
    assert "x: m" in str(error)
    assert "is invalid" in str(JobFailed({"name": "j", "state": "invalid", "errors": "oops"}))


@pytest.mark.parametrize(
    "payload",
    [
        b"HELLO\r\n",  # not HTTP: BadStatusLine
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"jobs\"",  # cut short: IncompleteRead
        b"",  # closed without an answer: RemoteDisconnected
        b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 70000 + b"\r\n\r\n",  # LineTooLong
    ],
)
def test_broken_http_is_unreachable(daemon, payload):
    daemon.route = raw_route(payload)
    with pytest.raises(DaemonUnreachable) as caught:
        Client(daemon.url, timeout=5).jobs()
    assert "cannot be reached" in str(caught.value)


def test_timeout_is_unreachable(daemon):
    def route(h, *args):
        time.sleep(1.0)

    daemon.route = route
    with pytest.raises(DaemonUnreachable):
        Client(daemon.url, timeout=0.2).jobs()


def test_timeout_while_reading_is_unreachable(daemon):
    def route(h, *args):
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        h.wfile.flush()
        time.sleep(1.0)

    daemon.route = route
    with pytest.raises(DaemonUnreachable):
        Client(daemon.url, timeout=0.2).jobs()


SECRET = "tok-Zq8xVw3pLm"


def test_token_file_too_big(tmp_path):
    token = tmp_path / "token"
    token.write_text(SECRET + "x" * 5000)
    with pytest.raises(BatchdError, match="larger than 4096 bytes") as caught:
        Client(token_file=str(token))
    assert SECRET not in str(caught.value) and "xxxx" not in str(caught.value)
    token.write_text(SECRET + "x" * (4096 - len(SECRET)))
    assert Client(token_file=str(token)).token.startswith(SECRET)


@pytest.mark.parametrize(
    "content",
    [SECRET + "\nsecond-line", SECRET + " trailing-word", SECRET + "\x00", SECRET + "\u00e9", SECRET + "\r\nmore"],
)
def test_token_file_with_bad_characters(tmp_path, content):
    token = tmp_path / "token"
    token.write_bytes(content.encode("utf-8"))
    with pytest.raises(BatchdError, match="visible ASCII") as caught:
        Client(token_file=str(token))
    message = str(caught.value)
    assert SECRET not in message and "second-line" not in message and "more" not in message
    assert isinstance(caught.value, ValueError)


def test_token_file_whitespace_around_is_stripped(tmp_path):
    token = tmp_path / "token"
    token.write_text("\n  " + SECRET + "\r\n\n")
    assert Client(token_file=str(token)).token == SECRET


def test_token_argument_is_checked():
    with pytest.raises(TokenError) as caught:
        Client(token=SECRET + "\nX-Injected: 1")
    assert SECRET not in str(caught.value)
