"""A client for batchd's HTTP API (standard library only).

    from batchd import Client
    rec = Client().recommendation("my-model")
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional

from .recommendation import Recommendation

__all__ = [
    "Client",
    "BatchdError",
    "ProblemError",
    "DaemonUnreachable",
    "JobFailed",
    "TokenError",
    "DEFAULT_URL",
    "MAX_BODY",
    "MAX_TOKEN_FILE",
]

DEFAULT_URL = "http://127.0.0.1:8477"

# The most bytes read of one answer: 64 MiB, plus the one byte that tells a
# longer answer (refused with BatchdError) from one of exactly 64 MiB.
MAX_BODY = 64 * 1024 * 1024 + 1

# The largest token file read; a larger one is refused.
MAX_TOKEN_FILE = 4096

CONTENT_TYPES = {
    ".toml": "application/toml",
    ".json": "application/json",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
}


class BatchdError(Exception):
    """Base class of this module's errors."""


class ProblemError(BatchdError):
    """The daemon refused a request (an application/problem+json answer)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        type: str = "about:blank",
        errors: Optional[List[Dict[str, str]]] = None,
        body: Any = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.errors: List[Dict[str, str]] = list(errors or [])
        self.body = body
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.status} {self.title}"
        if self.detail:
            text += f": {self.detail}"
        for error in self.errors:
            text += f"; {error.get('field') or '(document)'}: {error.get('message', '')}"
        return text


class DaemonUnreachable(BatchdError):
    """No daemon answered at the URL (refused, unresolvable, timed out)."""

    def __init__(self, url: str, reason: Any) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"batchd at {url} cannot be reached: {reason}")


class JobFailed(BatchdError):
    """`Client.wait` found the job failed or invalid; `.job` is its document."""

    def __init__(self, job: Dict[str, Any]) -> None:
        self.job = job
        errors = job.get("errors")
        why = job.get("error") or "; ".join(
            f"{e.get('field') or '(document)'}: {e.get('message', '')}" if isinstance(e, dict) else str(e)
            for e in (errors if isinstance(errors, list) else [])
        )
        super().__init__(f"job {job.get('name')!r} is {job.get('state')}" + (f": {why}" if why else ""))


class TokenError(BatchdError, ValueError):
    """The token (or its file) is unusable. The message never holds the token."""


def _check_token(token: str, where: str) -> str:
    bad = [c for c in token if not 0x21 <= ord(c) <= 0x7E]
    if bad:
        raise TokenError(
            f"{where} holds {len(bad)} character(s) outside visible ASCII (0x21-0x7E), "
            "such as spaces or line breaks inside it; a token is one line of visible ASCII"
        )
    return token


def _read_token(token_file: str) -> str:
    with open(token_file, "rb") as f:
        raw = f.read(MAX_TOKEN_FILE + 1)
    if len(raw) > MAX_TOKEN_FILE:
        raise TokenError(f"token file {token_file} is larger than {MAX_TOKEN_FILE} bytes; is it the right file?")
    raw = raw.strip()  # ASCII whitespace only, e.g. the final newline
    if not raw:
        raise TokenError(f"token file {token_file} is empty")
    return _check_token(raw.decode("latin-1"), f"token file {token_file}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuses every redirect: the 3xx comes back as an HTTPError, so the
    bearer token is never re-sent to another URL."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        return None


def _read_limited(stream: Any, url: str) -> bytes:
    limit = MAX_BODY
    parts: List[bytes] = []
    size = 0
    while size < limit:  # to the end: a short read then an IncompleteRead shows a cut answer
        part = stream.read(limit - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    data = b"".join(parts)
    if size >= limit:
        raise BatchdError(f"batchd at {url} sent an answer larger than {limit - 1} bytes; not read")
    remaining = getattr(stream, "length", None)
    if isinstance(remaining, int) and remaining > 0:  # Content-Length promised more
        raise http.client.IncompleteRead(data, remaining)
    return data


def _text(value: Any, default: str = "") -> str:
    return default if value is None else str(value)


class Client:
    """batchd's HTTP API. `url` defaults to $BATCHD_URL, else
    http://127.0.0.1:8477; the bearer token (sent on POST and DELETE) comes
    from `token`, else `token_file`, else the file named by $BATCHD_TOKEN_FILE.

    Redirects are not followed (a 3xx is a ProblemError) and the proxy
    variables (http_proxy, ...) are ignored; `proxy="http://host:port"` sends
    every request, the token included, through that proxy. Answers over 64 MiB
    are refused with BatchdError."""

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        token_file: Optional[str] = None,
        timeout: float = 30,
        proxy: Optional[str] = None,
    ) -> None:
        self.url = (url or os.environ.get("BATCHD_URL") or DEFAULT_URL).rstrip("/")
        if "://" not in self.url:
            self.url = "http://" + self.url
        token_file = token_file or os.environ.get("BATCHD_TOKEN_FILE") or None
        if token:
            _check_token(token, "the token")
        self.token = token if token is not None else (_read_token(token_file) if token_file else None)
        self.timeout = timeout
        # No environment proxies (http_proxy would see the token in clear text),
        # no redirects (they would re-send it elsewhere); `proxy` opts in to one.
        proxies = {"http": proxy, "https": proxy} if proxy else {}
        self._opener = urllib.request.build_opener(_NoRedirect(), urllib.request.ProxyHandler(proxies))

    def __repr__(self) -> str:
        return f"Client(url={self.url!r}, token={'set' if self.token else 'none'})"

    # Transport --------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        content_type: Optional[str] = None,
        query: Optional[Dict[str, Any]] = None,
    ) -> Any:
        """One request; returns the decoded JSON answer (None when empty)."""
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token and method in ("POST", "PUT", "PATCH", "DELETE"):
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with self._opener.open(req, timeout=self.timeout) as response:
                data = _read_limited(response, self.url)
        except urllib.error.HTTPError as error:
            raise self._problem(error, self.url) from None
        except urllib.error.URLError as error:
            raise DaemonUnreachable(self.url, error.reason) from None
        except http.client.HTTPException as error:
            # Not HTTP, or broken off: BadStatusLine, IncompleteRead, RemoteDisconnected...
            raise DaemonUnreachable(self.url, f"{type(error).__name__}: {error!s:.200}") from None
        except (OSError, socket.timeout) as error:  # refused, reset, timed out
            raise DaemonUnreachable(self.url, error) from None
        if not data:
            return None
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as error:  # ValueError covers JSONDecodeError and bad UTF-8
            raise BatchdError(f"batchd at {self.url} answered {method} {path} with something not JSON: {error}") from None

    @staticmethod
    def _problem(error: urllib.error.HTTPError, url: str = "") -> BatchdError:
        try:
            if 300 <= error.code < 400:
                location = error.headers.get("Location") if error.headers else None
                return ProblemError(
                    error.code,
                    str(error.reason or "Redirect"),
                    "batchd answered with a redirect" + (f" to {location}" if location else "")
                    + "; redirects are not followed (is the URL right?)",
                )
            try:
                raw = _read_limited(error, url)
            except BatchdError as too_big:
                return too_big
            except (OSError, http.client.HTTPException):
                raw = b""
        finally:
            error.close()
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            text = raw.decode("utf-8", "replace").strip()
            return ProblemError(error.code, str(error.reason or "HTTP error"), text[:500], body=raw)
        status = body.get("status")
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            status = error.code
        errors = body.get("errors")
        return ProblemError(
            status=status,
            title=_text(body.get("title"), str(error.reason or "")),
            detail=_text(body.get("detail")),
            type=_text(body.get("type"), "about:blank"),
            errors=[
                {"field": _text(e.get("field")), "message": _text(e.get("message"))}
                if isinstance(e, dict) else {"field": "", "message": _text(e)}
                for e in (errors if isinstance(errors, list) else [])
            ],
            body=body,
        )

    def _object(self, answer: Any, what: str) -> Dict[str, Any]:
        if not isinstance(answer, dict):
            raise BatchdError(f"batchd at {self.url} answered {what} with {type(answer).__name__}, not a JSON object")
        return answer

    @staticmethod
    def _job_path(name: str) -> str:
        return "/v1/jobs/" + urllib.parse.quote(name, safe="")

    # The API ----------------------------------------------------------------

    def jobs(self) -> List[Dict[str, Any]]:
        """Every job (GET /v1/jobs)."""
        jobs = self._object(self.request("GET", "/v1/jobs"), "GET /v1/jobs").get("jobs")
        if not isinstance(jobs, list):
            raise BatchdError(f"batchd at {self.url} answered GET /v1/jobs without a list of jobs")
        return list(jobs)

    def job(self, name: str) -> Dict[str, Any]:
        """One job with its history (GET /v1/jobs/NAME)."""
        return dict(self._object(self.request("GET", self._job_path(name)), "GET job"))

    def recommendation(self, name: str, evidence: str = "summary") -> Recommendation:
        """The job's recommendation; evidence="full" asks for every curve kept."""
        if evidence not in ("summary", "full"):
            raise ValueError(f"evidence must be 'summary' or 'full', got {evidence!r}")
        query = {"evidence": "full"} if evidence == "full" else None
        answer = self._object(self.request("GET", self._job_path(name) + "/recommendation", query=query), "GET recommendation")
        try:
            return Recommendation.from_dict(answer)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise BatchdError(f"batchd at {self.url} sent a malformed recommendation: {error!r:.200}") from None

    def lr_for(self, name: str, batch: int) -> float:
        """The LR batchd's rule gives for an effective batch of `batch`."""
        answer = self.request("GET", self._job_path(name) + "/recommendation", query={"batch_size": int(batch)})
        try:
            return float(self._object(answer, "GET recommendation")["learning_rate"])
        except (KeyError, TypeError, ValueError) as error:
            raise BatchdError(f"batchd at {self.url} sent a malformed learning rate: {error!r:.200}") from None

    def submit(self, path: str) -> Dict[str, Any]:
        """Submit a spec file (.toml, .json, .yaml/.yml); returns the new job."""
        extension = os.path.splitext(path)[1].lower()
        if extension not in CONTENT_TYPES:
            raise ValueError(f"{path}: a spec must end in .toml, .json, .yaml or .yml")
        with open(path, "rb") as f:
            body = f.read()
        answer = self.request("POST", "/v1/jobs", body=body, content_type=CONTENT_TYPES[extension])
        return dict(self._object(answer, "POST /v1/jobs"))

    def retune(self, name: str) -> Any:
        """Forget the stored recommendation and tune again."""
        return self.request("POST", self._job_path(name) + "/retune")

    def delete(self, name: str) -> None:
        """Remove the job's spec file and retire the job."""
        self.request("DELETE", self._job_path(name))

    def wait(self, name: str, timeout: Optional[float] = None, poll: float = 1.0) -> Recommendation:
        """Poll the job until it is done and return its recommendation; raise
        JobFailed when it is failed or invalid, TimeoutError after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(name)
            state = job.get("state")
            if state == "done":
                return self.recommendation(name)
            if state in ("failed", "invalid"):
                raise JobFailed(job)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {name!r} still {state} (phase {job.get('phase')}) after {timeout} s"
                )
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))
