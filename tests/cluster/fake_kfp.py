"""A fake Kubeflow Pipelines API server (v2beta1 REST) for tests: just enough for the real ``kfp.Client``.

Implements healthz, experiments (list with a display_name EQUALS filter, create, get), runs (create, get,
list) and recurring runs (list with filter and paging, create, get, delete, enable/disable), in memory. Every
request is recorded as a :class:`Request` (method, path, query, headers, raw body, parsed JSON), so tests can
assert what the client sent, and that nothing was sent at all. Unknown routes answer 404 (and are recorded too).

    with FakeKFP() as kfp_server:
        kfp.Client(host=kfp_server.url) ...
        kfp_server.requests

As the real API server (kubeflow/pipelines, backend/src/apiserver/main.go) does, ``GET /apis/v2beta1/healthz``
answers without authentication, with ``{"commit_sha", "tag_name", "multi_user", "pipeline_store"}``;
``tag_name`` is the backend version (``version=``; ``None`` answers "unknown", as a server built without it).

Multi-user mode (``multi_user=True, token=..., namespaces={...}``) answers as multi-user Kubeflow does:
- an experiment created or listed without a namespace: HTTP 400, gRPC code 3, "Invalid input error: An
  experiment cannot have an empty namespace in multi-user mode" (the real server's check,
  backend/src/apiserver/server/experiment_server.go, made before it authenticates the caller);
- any other request without ``Authorization: Bearer <token>`` (or the ``kubeflow-userid`` header Istio sets):
  HTTP 401, gRPC code 16, "Request header error: there is no user identity header." (the real message,
  backend/src/apiserver/auth); a wrong token: 401 too;
- a namespace the caller is not granted (not in ``namespaces``): HTTP 403, gRPC code 7 (the real server asks
  Kubernetes with a SubjectAccessReview; here the grant is the ``namespaces`` set);
- recurring runs listed with neither a namespace nor an experiment: HTTP 400 (the fake's wording).
"""
from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/apis/v2beta1"


@dataclass
class Request:
    method: str
    path: str
    query: dict
    body: str
    json: Any = None
    headers: dict = field(default_factory=dict)


@dataclass
class State:
    experiments: dict = field(default_factory=dict)
    runs: dict = field(default_factory=dict)
    recurring_runs: dict = field(default_factory=dict)


def _name_filter(query: dict) -> str | None:
    raw = (query.get("filter") or [""])[0]
    if not raw:
        return None
    for pred in json.loads(raw).get("predicates", []):
        if pred.get("key") == "display_name" and pred.get("operation") in ("EQUALS", 1):
            return pred.get("stringValue", pred.get("string_value"))
    return None


class FakeKFP:
    def __init__(self, *, page_limit: int | None = None, version: str | None = "2.15.0", multi_user: bool = False,
                 token: str | None = None, namespaces: set[str] | frozenset = frozenset()):
        self.requests: list[Request] = []
        self.state = State()
        self.page_limit = page_limit  # cap page sizes, to exercise the client's paging
        self.version = version
        self.multi_user = multi_user
        self.token = token
        self.namespaces = set(namespaces)
        assert not multi_user or token, "a multi-user fake needs the token its callers must present"
        self._lock = threading.Lock()
        handler = self._handler_class()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeKFP:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def calls(self, method: str, path_regex: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.fullmatch(path_regex, r.path)]

    # ------------------------------------------------------------------------------------ multi-user
    def _caller_error(self, headers: dict) -> tuple[int, Any] | None:
        """401 unless the request carries the caller's identity (multi-user mode only)."""
        if not self.multi_user:
            return None
        auth = headers.get("authorization", "")
        if not auth and not headers.get("kubeflow-userid"):
            return 401, _err("Request header error: there is no user identity header.", code=16)
        if auth and auth != f"Bearer {self.token}":
            return 401, _err("Failed to authenticate token review: the token is not valid", code=16)
        return None

    def _namespace_error(self, namespace: str | None, what: str) -> tuple[int, Any] | None:
        if not self.multi_user:
            return None
        if not namespace:
            return 400, _err(f"Invalid input error: An {what} cannot have an empty namespace in multi-user mode",
                             code=3)
        if namespace not in self.namespaces:
            return 403, _err(f"PermissionDenied: the caller is not authorized in namespace {namespace!r}", code=7)
        return None

    def _experiment_namespace(self, experiment_id: str | None) -> str | None:
        exp = self.state.experiments.get(experiment_id or "")
        return exp["namespace"] if exp else None

    # ------------------------------------------------------------------------------------ routes
    def handle(self, method: str, path: str, query: dict, body: Any, headers: dict | None = None) -> tuple[int, Any]:
        st = self.state
        headers = headers or {}
        if method == "GET" and path == f"{API}/healthz":
            return 200, {"commit_sha": "0000000fake", "tag_name": self.version or "unknown",
                         "multi_user": self.multi_user, "pipeline_store": "database"}

        if path == f"{API}/experiments" and method in ("GET", "POST"):
            namespace = (query.get("namespace") or [None])[0] if method == "GET" else body.get("namespace")
            refused = self._namespace_error(namespace, "experiment") or self._caller_error(headers)
            if refused:
                return refused
        else:
            refused = self._caller_error(headers)
            if refused:
                return refused
            if self.multi_user and path == f"{API}/runs" and method == "POST":
                refused = self._namespace_error(self._experiment_namespace(body.get("experiment_id")), "run")
            if self.multi_user and path == f"{API}/recurringruns":
                if method == "POST":
                    refused = self._namespace_error(self._experiment_namespace(body.get("experiment_id")),
                                                    "recurring run")
                elif method == "GET":
                    namespace = (query.get("namespace") or [None])[0] or self._experiment_namespace(
                        (query.get("experiment_id") or [None])[0])
                    if not namespace:
                        return 400, _err("Invalid input error: in multi-user mode, list recurring runs of a "
                                         "namespace or an experiment", code=3)
                    refused = self._namespace_error(namespace, "recurring run")
            if refused:
                return refused

        if path == f"{API}/experiments":
            if method == "GET":
                name = _name_filter(query)
                namespace = (query.get("namespace") or [None])[0]
                exps = [e for e in st.experiments.values() if (name is None or e["display_name"] == name)
                        and (not self.multi_user or e["namespace"] == namespace)]
                return 200, {"experiments": exps, "total_size": len(exps)} if exps else {}
            if method == "POST":
                exp = {"experiment_id": str(uuid.uuid4()), "display_name": body["display_name"], "created_at": _now(),
                       "description": body.get("description") or "", "namespace": body.get("namespace") or "",
                       "storage_state": "AVAILABLE"}
                st.experiments[exp["experiment_id"]] = exp
                return 200, exp
        if m := re.fullmatch(rf"{API}/experiments/([^/:]+)", path):
            exp = st.experiments.get(m.group(1))
            return (200, exp) if exp and method == "GET" else (404, _err("experiment not found"))

        if path == f"{API}/runs":
            if method == "POST":
                if body.get("experiment_id") not in st.experiments:
                    return 400, _err("experiment_id is missing or unknown")
                run = {"run_id": str(uuid.uuid4()), "display_name": body.get("display_name"),
                       "experiment_id": body["experiment_id"], "state": "PENDING", "created_at": _now(),
                       "storage_state": "AVAILABLE",
                       "runtime_config": body.get("runtime_config") or {}}
                st.runs[run["run_id"]] = {**run, "pipeline_spec": body.get("pipeline_spec")}
                return 200, run
            if method == "GET":
                runs = [{k: v for k, v in r.items() if k != "pipeline_spec"} for r in st.runs.values()]
                return 200, {"runs": runs, "total_size": len(runs)} if runs else {}
        if m := re.fullmatch(rf"{API}/runs/([^/:]+)", path):
            run = st.runs.get(m.group(1))
            if run and method == "GET":
                return 200, {k: v for k, v in run.items() if k != "pipeline_spec"}
            return 404, _err("run not found")

        if path == f"{API}/recurringruns":
            if method == "GET":
                name = _name_filter(query)
                exp_id = (query.get("experiment_id") or [None])[0]
                found = [self._public(r) for r in st.recurring_runs.values()
                         if (name is None or r["display_name"] == name)
                         and (exp_id is None or r["experiment_id"] == exp_id)]
                size = int((query.get("page_size") or ["10"])[0]) or 10
                if self.page_limit:
                    size = min(size, self.page_limit)
                start = int((query.get("page_token") or ["0"])[0] or 0)
                page = found[start:start + size]
                out: dict = {"total_size": len(found)}
                if page:
                    out["recurringRuns"] = page
                if start + size < len(found):
                    out["next_page_token"] = str(start + size)
                return 200, out
            if method == "POST":
                if body.get("experiment_id") not in st.experiments:
                    return 400, _err("experiment_id is missing or unknown")
                trigger = body.get("trigger") or {}
                cron = (trigger.get("cron_schedule") or {}).get("cron")
                if cron is not None and len(cron.split()) != 6:
                    return 400, _err(f"invalid cron {cron!r}: KFP expects 6 fields")
                rr = {"recurring_run_id": str(uuid.uuid4()), "display_name": body.get("display_name"),
                      "created_at": _now(),
                      "experiment_id": body["experiment_id"], "mode": body.get("mode") or "ENABLE",
                      "status": "ENABLED" if body.get("mode", "ENABLE") == "ENABLE" else "DISABLED",
                      "trigger": trigger, "max_concurrency": body.get("max_concurrency"),
                      "no_catchup": body.get("no_catchup"),
                      "runtime_config": body.get("runtime_config") or {},
                      "pipeline_spec": body.get("pipeline_spec")}
                st.recurring_runs[rr["recurring_run_id"]] = rr
                return 200, self._public(rr)
        if m := re.fullmatch(rf"{API}/recurringruns/([^/:]+)(:enable|:disable)?", path):
            rr = st.recurring_runs.get(m.group(1))
            if rr is None:
                return 404, _err("recurring run not found")
            if method == "DELETE" and not m.group(2):
                del st.recurring_runs[m.group(1)]
                return 200, {}
            if method == "POST" and m.group(2):
                rr["status"] = "ENABLED" if m.group(2) == ":enable" else "DISABLED"
                return 200, {}
            if method == "GET" and not m.group(2):
                return 200, self._public(rr)
        return 404, _err(f"fake KFP: no route for {method} {path}")

    @staticmethod
    def _public(rr: dict) -> dict:
        return {k: v for k, v in rr.items() if k != "pipeline_spec"}

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _serve(self):
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8", "replace") if length else ""
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = None
                query = parse_qs(parts.query)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with fake._lock:
                    fake.requests.append(Request(self.command, parts.path, query, raw, body, headers))
                    status, payload = fake.handle(self.command, parts.path, query, body or {}, headers)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

        return Handler


def _err(message: str, code: int = 5) -> dict:
    """The error body of KFP's REST gateway (a google.rpc.Status): gRPC ``code`` (5 NOT_FOUND, 3
    INVALID_ARGUMENT, 7 PERMISSION_DENIED, 16 UNAUTHENTICATED) and the message."""
    return {"error": message, "code": code, "message": message, "details": []}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
