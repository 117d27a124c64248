"""Leases in object storage: at most one live run per run id.

A run id names one prefix, ``runs/<run_id>/``; two runs writing it at once would restore or overwrite each
other's outputs (a resumed run decides from what is in the prefix). So whoever runs a run id holds its lease,
the object ``runs/<run_id>/run-summary/lease.json``::

    {"holder": "local:<host>:<pid>" | "kfp:<workflow>", "token": <uuid of this write>, "ttl": <seconds>,
     "acquired": <UTC>, "renewed": <UTC>, "host": ..., "pid": ...}

- **Expiry.** A lease is live while the server-measured time since its last write (the response's ``Date``
  minus the object's ``Last-Modified``, so the clocks of the machines involved do not matter) is below its
  ``ttl``. The holder renews it from a heartbeat thread every ``ttl / 4``; a holder that dies stops renewing
  and its lease expires. A local holder on this same host whose process is gone is expired at once (a run
  killed with SIGKILL can be resumed immediately).
- **Taking it.** Read; refuse when another holder's lease is live; write our lease with a fresh token, as a
  conditional write (``If-None-Match: *`` when there was none, ``If-Match: <etag>`` over an expired one or our
  own); wait ``settle`` seconds, unless the server is seen to honour conditions (a probe on a scratch object:
  both conditions must be refused); read back: only the writer whose token is there holds it.
- **What correctness rests on.** With a server that honours conditional writes (AWS S3 since 2024, the
  SeaweedFS of ``ensemw2s storage serve``: tests/storage/test_lease.py checks it) two contenders cannot both
  write. A server that ignores the headers (older MinIO/SeaweedFS) still gives last-writer-wins, and the
  read-back after ``settle`` leaves exactly one winner unless a contender stalls for longer than ``settle``
  between its read and its write (then both may believe they hold it until the next heartbeat, which finds
  the other token and reports the lease lost). A server that refuses the headers as unsupported is written
  to unconditionally, with the same read-back. This window is the documented limit of the design.
- **Losing it.** A heartbeat that finds another holder's token, or that could not renew for longer than
  ``ttl``, calls ``on_lost`` (default: interrupt the main thread, so the run stops instead of writing on).

Locally ``ensemw2s run`` holds the lease around the whole DAG. On a cluster (docs/cluster.md, "One run per run
id") every task of a KFP run holds it under the run's Argo workflow name (``$ENSEMW2S_LEASE_HOLDER``, from the
pod's labels): ``start-run`` takes it, each step renews it while it works, ``end-run`` releases it.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Optional

from ensemw2s.errors import ClusterError, StorageError
from ensemw2s.steps.keys import RUN_SUMMARY

log = logging.getLogger("ensemw2s.lease")

LEASE = "lease.json"
LOCAL_TTL = 120.0  # a local run renews every 30 s; another machine may take over 2 min after it died
CLUSTER_TTL = 900.0  # KFP steps renew while they work; between steps (a pod waiting for a GPU node) it may lapse
SETTLE = 2.0  # seconds between writing a lease and reading it back
HOLDER_ENV = "ENSEMW2S_LEASE_HOLDER"  # set on the cluster from the pod's workflow label (pipelines/k8s.py)
_NOT_SUPPORTED = ("NotImplemented", "501", "InvalidArgument", "InvalidRequest")


def local_holder() -> str:
    return f"local:{socket.gethostname()}:{os.getpid()}"


def cluster_holder() -> Optional[str]:
    """The KFP run this pod belongs to (``kfp:<Argo workflow name>``), None outside a cluster pod."""
    name = os.environ.get(HOLDER_ENV, "").strip()
    return f"kfp:{name}" if name else None


def _utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Current:
    """The lease object as stored: its body, ETag and age in seconds (measured by the server's clock)."""

    body: dict
    etag: str
    age: float

    @property
    def holder(self) -> str:
        return str(self.body.get("holder", "?"))

    @property
    def ttl(self) -> float:
        try:
            return float(self.body.get("ttl", LOCAL_TTL))
        except (TypeError, ValueError):
            return LOCAL_TTL

    def expired(self) -> bool:
        if self.age > self.ttl:
            return True
        # a local holder on this host whose process is gone (killed) holds nothing
        if (str(self.body.get("holder", "")).startswith("local:") and self.body.get("host") == socket.gethostname()
                and isinstance(self.body.get("pid"), int) and not _pid_alive(self.body["pid"])):
            return True
        return False


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _interrupt_main(message: str) -> None:
    import _thread
    import sys

    print(f"error: {message}", file=sys.stderr, flush=True)
    _thread.interrupt_main()


class Lease:
    """The lease of ``run_id`` for ``holder`` (see the module docstring). As a context manager: acquire, keep
    renewing from a heartbeat thread, release at exit."""

    def __init__(self, store, run_id: str, holder: str, *, ttl: float = LOCAL_TTL, settle: float = SETTLE,
                 renew_every: Optional[float] = None,
                 on_lost: Optional[Callable[[str], None]] = None):
        self.store, self.run_id, self.holder = store, run_id, holder
        self.ttl, self.settle = float(ttl), float(settle)
        self.renew_every = float(renew_every) if renew_every else self.ttl / 4
        self.on_lost = on_lost or _interrupt_main
        self.key = store.key(run_id, RUN_SUMMARY, LEASE)
        self.uri = store._uri(self.key)
        self.token: Optional[str] = None
        self.etag: Optional[str] = None
        self.acquired_at: Optional[str] = None
        self.lost: Optional[str] = None
        self.conditional = True  # False once the server refused conditional writes as unsupported
        self._honours: Optional[bool] = None  # server_honours_conditions(), once probed
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._last_renewal = 0.0

    # ------------------------------------------------------------------ storage
    def read(self) -> Optional[Current]:
        from botocore.exceptions import ClientError

        from ensemw2s.storage import _is_not_found

        with self.store._errors("get lease", self.uri):
            try:
                resp = self.store.client.get_object(Bucket=self.store.bucket, Key=self.key)
            except ClientError as exc:
                if _is_not_found(exc):
                    return None
                raise
            raw = resp["Body"].read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        modified = resp.get("LastModified")
        date = (resp.get("ResponseMetadata", {}).get("HTTPHeaders") or {}).get("date")
        now = email.utils.parsedate_to_datetime(date) if date else dt.datetime.now(dt.timezone.utc)
        age = (now - modified).total_seconds() if modified is not None else float("inf")
        return Current(body, str(resp.get("ETag", "")), max(0.0, age))

    def _write(self, body: dict, *, if_none_match: bool = False, if_match: Optional[str] = None) -> bool:
        """Put the lease; False when the server refused a condition (someone else wrote first)."""
        from botocore.exceptions import ClientError

        from ensemw2s.storage import _error_code

        data = (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()
        kwargs: dict = {"Bucket": self.store.bucket, "Key": self.key, "Body": data,
                        "ContentType": "application/json"}
        if self.conditional and if_none_match:
            kwargs["IfNoneMatch"] = "*"
        elif self.conditional and if_match:
            kwargs["IfMatch"] = if_match
        with self.store._errors("put lease", self.uri):
            try:
                resp = self.store.client.put_object(**kwargs)
            except ClientError as exc:
                code = _error_code(exc)
                if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                    return False
                if ("IfNoneMatch" in kwargs or "IfMatch" in kwargs) and code in _NOT_SUPPORTED:
                    log.warning("%s: the object store refused a conditional write (%s); using write, settle "
                                "and read back alone", self.uri, code)
                    self.conditional = False
                    kwargs.pop("IfNoneMatch", None)
                    kwargs.pop("IfMatch", None)
                    resp = self.store.client.put_object(**kwargs)
                else:
                    raise
        self.etag = str(resp.get("ETag", "")) or None
        return True

    def server_honours_conditions(self) -> bool:
        """Whether the object store refuses a write whose condition fails: probed once per lease on a scratch
        object beside the lease (a put, then an ``If-None-Match: *`` and an ``If-Match: <wrong etag>`` put over
        it, both of which must be refused, then a delete; a few milliseconds). Where it does, two contenders
        cannot both write the lease and the read-back needs no ``settle`` wait before it."""
        if self._honours is None:
            self._honours = self.conditional and self._probe_conditions()
        return self._honours

    def _probe_conditions(self) -> bool:
        from botocore.exceptions import ClientError

        from ensemw2s.storage import _error_code

        key = self.store.key(self.run_id, RUN_SUMMARY, f"lease-probe-{uuid.uuid4().hex}.json")
        client, bucket = self.store.client, self.store.bucket
        uri = self.store._uri(key)
        with self.store._errors("probe conditional writes", uri):
            client.put_object(Bucket=bucket, Key=key, Body=b"{}")
            try:
                for condition in ({"IfNoneMatch": "*"}, {"IfMatch": '"0000000000000000"'}):
                    try:
                        client.put_object(Bucket=bucket, Key=key, Body=b"{}", **condition)
                    except ClientError as exc:
                        code = _error_code(exc)
                        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                            continue  # refused, as it must be
                        if code in _NOT_SUPPORTED:
                            self.conditional = False
                            return False
                        raise
                    return False  # the write went through: the server ignores this condition
                return True
            finally:
                with contextlib.suppress(ClientError):
                    client.delete_object(Bucket=bucket, Key=key)

    def _body(self, token: str) -> dict:
        now = time.time()
        return {"holder": self.holder, "token": token, "ttl": self.ttl, "run_id": self.run_id,
                "acquired": self.acquired_at or _utc(now), "renewed": _utc(now), "host": socket.gethostname(),
                "pid": os.getpid()}

    def _held_by_other(self, cur: Current) -> ClusterError:
        left = max(0, int(cur.ttl - cur.age))
        return ClusterError(
            f"run id {self.run_id!r} is in use: {self.uri} is held by {cur.holder} (since "
            f"{cur.body.get('acquired', '?')}, renewed {int(cur.age)} s ago, expires in {left} s unless "
            "renewed); two live runs of one run id would restore or overwrite each other's outputs. Wait for "
            "that run to end (a holder that died frees it when it expires) or use another run id")

    # ------------------------------------------------------------------ protocol
    def acquire(self, attempts: int = 4) -> "Lease":
        """Take the lease or raise :class:`ClusterError` naming the live holder."""
        for _ in range(attempts):
            cur = self.read()
            if cur is not None and cur.holder != self.holder and not cur.expired():
                raise self._held_by_other(cur)
            if cur is not None and cur.holder == self.holder:
                self.acquired_at = cur.body.get("acquired")
            token = uuid.uuid4().hex
            ok = self._write(self._body(token), if_none_match=cur is None,
                             if_match=cur.etag if cur is not None else None)
            if not ok:  # someone wrote between our read and our write
                back = self.read()
                if back is not None and back.holder == self.holder:
                    return self._hold(back)  # another task of the same KFP run: it holds it for us too
                continue  # look again
            if self.settle > 0 and not self.server_honours_conditions():
                time.sleep(self.settle)
            back = self.read()
            if back is not None and back.holder == self.holder:
                # ours (or renewed meanwhile by another task of the same holder: a parallel step of one KFP run)
                return self._hold(back)
            if back is not None and not back.expired():
                raise self._held_by_other(back)
        raise ClusterError(f"could not take the lease {self.uri} for run id {self.run_id!r}: {attempts} attempts "
                           "were each overtaken by another writer; is another run of this run id starting?")

    def _hold(self, cur: Current) -> "Lease":
        self.token, self.etag = cur.body.get("token"), cur.etag
        self.acquired_at = cur.body.get("acquired")
        self._last_renewal = time.monotonic()
        return self

    def renew(self) -> bool:
        """Write a fresh expiry; False (and ``lost`` set) when another holder has it now."""
        cur = self.read()
        if cur is not None and cur.holder != self.holder:
            self.lost = (f"the lease of run id {self.run_id!r} ({self.uri}) was taken by {cur.holder}; this run "
                         "stops rather than write beside it")
            return False
        token = uuid.uuid4().hex
        ok = self._write(self._body(token), if_none_match=cur is None,
                         if_match=cur.etag if cur is not None else None)
        if not ok:  # overtaken between read and write: decide on the next beat
            return True
        self.token = token
        self._last_renewal = time.monotonic()
        return True

    def release(self) -> None:
        """Delete the lease when it is still ours (never someone else's)."""
        with contextlib.suppress(StorageError):
            cur = self.read()
            if cur is None or cur.holder != self.holder:
                return
            with self.store._errors("delete lease", self.uri):
                self.store.client.delete_object(Bucket=self.store.bucket, Key=self.key)

    # ------------------------------------------------------------------ heartbeat
    def start_heartbeat(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _beat(self) -> None:
        while not self._stop.wait(self.renew_every):
            try:
                ok = self.renew()
            except StorageError as exc:
                ok = True
                if time.monotonic() - self._last_renewal > self.ttl:
                    self.lost = (f"the lease of run id {self.run_id!r} could not be renewed for more than "
                                 f"{int(self.ttl)} s ({exc}); another run may hold it now")
                    ok = False
                else:
                    log.warning("warning: lease renewal failed (will retry): %s", exc)
            if not ok:
                self.on_lost(self.lost or "lease lost")
                return

    def __enter__(self) -> "Lease":
        self.acquire()
        self.start_heartbeat()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_heartbeat()
        self.release()


@contextlib.contextmanager
def run_lease(store, run_id: str, **kwargs):
    """``ensemw2s run``: hold ``run_id``'s lease (this process as holder) around the whole local run."""
    with Lease(store, run_id, local_holder(), **kwargs) as lease:
        yield lease


def step_lease(store, run_id: str, **kwargs) -> Optional[Lease]:
    """In a cluster pod (``$ENSEMW2S_LEASE_HOLDER`` set): take or renew the run's lease for this KFP run and
    keep renewing it while the step works (the caller stops the heartbeat; the run keeps the lease between
    steps, ``end-run`` releases it). None outside a cluster pod: locally ``ensemw2s run`` holds it."""
    holder = cluster_holder()
    if holder is None:
        return None
    lease = Lease(store, run_id, holder, ttl=kwargs.pop("ttl", CLUSTER_TTL), **kwargs)
    lease.acquire()
    lease.start_heartbeat()
    return lease


def end_run(store, run_id: str) -> bool:
    """``end-run``: release the run's lease when this KFP run holds it; True when released."""
    holder = cluster_holder()
    if holder is None:
        return False
    lease = Lease(store, run_id, holder, ttl=CLUSTER_TTL)
    cur = lease.read()
    if cur is None or cur.holder != holder:
        return False
    lease.release()
    return True
