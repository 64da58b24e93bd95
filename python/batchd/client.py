"""A client for batchd's HTTP API (standard library only).

    from batchd import Client
    rec = Client().recommendation("my-model")
"""
from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional

from .recommendation import Recommendation

__all__ = ["Client", "ProblemError", "DaemonUnreachable", "JobFailed", "DEFAULT_URL"]

DEFAULT_URL = "http://127.0.0.1:8477"

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
        why = job.get("error") or "; ".join(
            f"{e.get('field') or '(document)'}: {e.get('message', '')}" for e in job.get("errors") or []
        )
        super().__init__(f"job {job.get('name')!r} is {job.get('state')}" + (f": {why}" if why else ""))


def _read_token(token_file: str) -> str:
    with open(token_file, encoding="utf-8") as f:
        token = f.read().strip()
    if not token:
        raise ValueError(f"token file {token_file} is empty")
    return token


class Client:
    """batchd's HTTP API. `url` defaults to $BATCHD_URL, else
    http://127.0.0.1:8477; the bearer token (sent on POST and DELETE) comes
    from `token`, else `token_file`, else the file named by $BATCHD_TOKEN_FILE."""

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        token_file: Optional[str] = None,
        timeout: float = 30,
    ) -> None:
        self.url = (url or os.environ.get("BATCHD_URL") or DEFAULT_URL).rstrip("/")
        if "://" not in self.url:
            self.url = "http://" + self.url
        token_file = token_file or os.environ.get("BATCHD_TOKEN_FILE") or None
        self.token = token if token is not None else (_read_token(token_file) if token_file else None)
        self.timeout = timeout

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
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as error:
            raise self._problem(error) from None
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as error:
            raise DaemonUnreachable(self.url, getattr(error, "reason", error)) from None
        if not data:
            return None
        return json.loads(data)

    @staticmethod
    def _problem(error: urllib.error.HTTPError) -> ProblemError:
        try:
            raw = error.read()
        except OSError:
            raw = b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            text = raw.decode("utf-8", "replace").strip()
            return ProblemError(error.code, str(error.reason or "HTTP error"), text[:500], body=raw)
        return ProblemError(
            status=int(body.get("status", error.code)),
            title=str(body.get("title", error.reason or "")),
            detail=str(body.get("detail") or ""),
            type=str(body.get("type", "about:blank")),
            errors=[{"field": e.get("field", ""), "message": e.get("message", "")} for e in body.get("errors") or []],
            body=body,
        )

    @staticmethod
    def _job_path(name: str) -> str:
        return "/v1/jobs/" + urllib.parse.quote(name, safe="")

    # The API ----------------------------------------------------------------

    def jobs(self) -> List[Dict[str, Any]]:
        """Every job (GET /v1/jobs)."""
        return list(self.request("GET", "/v1/jobs")["jobs"])

    def job(self, name: str) -> Dict[str, Any]:
        """One job with its history (GET /v1/jobs/NAME)."""
        return dict(self.request("GET", self._job_path(name)))

    def recommendation(self, name: str, evidence: str = "summary") -> Recommendation:
        """The job's recommendation; evidence="full" asks for every curve kept."""
        if evidence not in ("summary", "full"):
            raise ValueError(f"evidence must be 'summary' or 'full', got {evidence!r}")
        query = {"evidence": "full"} if evidence == "full" else None
        return Recommendation.from_dict(self.request("GET", self._job_path(name) + "/recommendation", query=query))

    def lr_for(self, name: str, batch: int) -> float:
        """The LR batchd's rule gives for an effective batch of `batch`."""
        answer = self.request("GET", self._job_path(name) + "/recommendation", query={"batch_size": int(batch)})
        return float(answer["learning_rate"])

    def submit(self, path: str) -> Dict[str, Any]:
        """Submit a spec file (.toml, .json, .yaml/.yml); returns the new job."""
        extension = os.path.splitext(path)[1].lower()
        if extension not in CONTENT_TYPES:
            raise ValueError(f"{path}: a spec must end in .toml, .json, .yaml or .yml")
        with open(path, "rb") as f:
            body = f.read()
        return dict(self.request("POST", "/v1/jobs", body=body, content_type=CONTENT_TYPES[extension]))

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
