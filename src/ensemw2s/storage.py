"""Object storage (S3 through boto3): the run layout, manifests, verified upload and download.

Every artifact lives under ``s3://<bucket>/<prefix>/<run_id>/<step>/<output>/``::

    files/<relpath>     the artifact's files
    manifest.json       written LAST: run, step, output, producer, config hash, and size + sha256 + crc32c
                        per file

A manifest is only written after every file is uploaded, so a killed upload is never seen as complete, and
downloads are verified against it: the sha256 is the content's identity (resume keys are built from it), the
CRC32C (the checksum S3 and GCS use for transfer integrity, hardware-accelerated here at ~11 GB/s against
~1.7 GB/s for sha256) is checked on every download while the bytes arrive; a manifest without a crc32c (an
older artifact) is checked by its sha256. Endpoint and credentials come from the config, the environment
(``S3_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``) or the embedded SeaweedFS server
(:mod:`ensemw2s.s3server`). Secrets never appear in messages or logs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Optional
from urllib.parse import urlparse

from ensemw2s.config import StorageConfig, check_endpoint
from ensemw2s.digests import HASHES, MiB, file_digests
from ensemw2s.errors import CorruptArtifactError, MissingObjectError, StorageError

MANIFEST = "manifest.json"
FILES = "files"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_DELETE_BATCH = 1000


def validate_name(kind: str, value: str) -> str:
    """Run ids, step names and output names: ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}`` and no ``..``."""
    # a trailing '.' is refused too: Windows drops it from folder names and Kubernetes names cannot end in one
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value) or ".." in value or value.endswith("."):
        raise StorageError(
            f"invalid {kind} {value!r}: use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or "
            "digit, without '..' and not ending in '.'"
        )
    return value


def _validate_relpath(kind: str, value: str) -> str:
    """A relative file path inside an artifact: '/'-separated, no empty, '.' or '..' parts, no control chars."""
    if not isinstance(value, str) or not value or _CONTROL_RE.search(value) or "\\" in value:
        raise StorageError(f"invalid {kind} {value!r}: must be a non-empty relative path without control "
                           "characters or backslashes")
    parts = value.split("/")
    if value.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"invalid {kind} {value!r}: must be a relative path without empty, '.' or '..' parts")
    return value


def _embedded_hint() -> str:
    return "run `ensemw2s storage serve` or set S3_ENDPOINT_URL (with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"


def _env_endpoint() -> str | None:
    """``$S3_ENDPOINT_URL`` (checked like ``storage.endpoint``), None when unset or empty."""
    value = os.environ.get("S3_ENDPOINT_URL") or None
    return check_endpoint("S3_ENDPOINT_URL", value) if value else None


def resolve_credentials(cfg: StorageConfig) -> tuple[str, str | None, str | None, str]:
    """``(endpoint, access_key, secret_key, region)``.

    Order: ``cfg.endpoint``, then ``$S3_ENDPOINT_URL`` (keys from ``$AWS_ACCESS_KEY_ID`` /
    ``$AWS_SECRET_ACCESS_KEY``, region from ``$AWS_DEFAULT_REGION``), then the embedded server's state. With
    an explicit endpoint but no keys in the environment the keys are None and boto3's own chain decides
    (shared config, instance role) — unless the endpoint is the embedded server's, whose keys are used.
    """
    endpoint = cfg.endpoint or _env_endpoint()
    if endpoint:
        ak = os.environ.get("AWS_ACCESS_KEY_ID") or None
        sk = os.environ.get("AWS_SECRET_ACCESS_KEY") or None
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or cfg.region
        if not (ak and sk):
            from ensemw2s import s3server

            with contextlib.suppress(Exception):
                info = s3server.status()
                if info is not None and info.endpoint.rstrip("/") == endpoint.rstrip("/"):
                    ak, sk = info.access_key, info.secret_key
        return endpoint, ak, sk, region
    from ensemw2s import s3server

    try:
        info = s3server.status()
    except Exception as exc:  # noqa: BLE001 - any failure to read the state means "no embedded server"
        raise StorageError(f"no object storage configured and the embedded S3 server state is unreadable "
                           f"({type(exc).__name__}): {_embedded_hint()}") from None
    if info is None:
        raise StorageError(f"no object storage configured and the embedded S3 server is not running: "
                           f"{_embedded_hint()}")
    return info.endpoint, info.access_key, info.secret_key, cfg.region


def storage_env(cfg: StorageConfig, *, start_embedded: bool = True) -> dict:
    """Point this process (and the step subprocesses it starts) at the object store of ``cfg``; start the
    embedded SeaweedFS server when no endpoint is configured. Returns a description (no secrets)."""
    endpoint = cfg.endpoint or _env_endpoint()
    if endpoint:
        return {"endpoint": endpoint, "embedded": False}
    from ensemw2s import s3server

    info = s3server.ensure_running() if start_embedded else s3server.status()
    if info is None:
        raise StorageError(f"no S3 endpoint configured and the embedded server is not running: {_embedded_hint()}")
    os.environ["S3_ENDPOINT_URL"] = info.endpoint
    os.environ["AWS_ACCESS_KEY_ID"] = info.access_key
    os.environ["AWS_SECRET_ACCESS_KEY"] = info.secret_key
    return {"endpoint": info.endpoint, "embedded": True}


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _error_code(exc: BaseException) -> str:
    resp = getattr(exc, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", "")) or str(
        resp.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _is_not_found(exc: BaseException) -> bool:
    return _error_code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


def _cause(exc: BaseException) -> str:
    """A short, secret-free description of a boto3/botocore failure."""
    from botocore import exceptions as bex

    if isinstance(exc, (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ConnectionClosedError)):
        return f"cannot connect ({type(exc).__name__})"
    if isinstance(exc, bex.ReadTimeoutError):
        return "timed out waiting for the server (ReadTimeoutError)"
    if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError)):
        return "no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    if isinstance(exc, bex.ClientError):
        code = _error_code(exc)
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                    "InvalidClientTokenId", "AuthorizationHeaderMalformed"):
            return f"wrong credentials ({code})"
        if code in ("AccessDenied", "403", "Forbidden"):
            return f"access denied ({code}): wrong credentials or no permission"
        if code in ("NoSuchBucket",):
            return "bucket does not exist (NoSuchBucket)"
        if code in ("NoSuchKey", "404", "NotFound"):
            return f"not found ({code})"
        return f"{code or 'error'}: {exc.response.get('Error', {}).get('Message', '')}".strip().rstrip(":")
    if isinstance(exc, bex.BotoCoreError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"


class _HashingFile:
    """A seekable file for ``download_fileobj`` that hashes the bytes while they land (see ``Store._download``).

    s3transfer writes the ranged parts from its IO thread, each as ``seek(offset); write(data)``, in whatever
    order they arrive. ``write`` only records which byte ranges are on disk; a hasher thread reads back (from the
    page cache) and hashes the contiguous prefix as it grows, so neither the writes nor the network wait for
    the hash. ``hexdigest`` is the digest of the whole file whatever happened: if the prefix did not reach the
    end (a retried part rewrote bytes out of step), the file is hashed again from the start.
    """

    def __init__(self, fh: BinaryIO, algo: str = "sha256"):
        import threading

        self._fh = fh  # opened "w+b", unbuffered: os.pread reads back every byte written
        self._fd = fh.fileno()
        self._pos = 0
        self._algo = algo
        self._h = HASHES[algo]()
        self._done = 0  # bytes [0, _done) are hashed
        self._ranges: dict[int, int] = {}  # start -> end of written bytes not hashed yet (adjacent ones merged)
        self._ends: dict[int, int] = {}  # end -> start, to merge a write onto the range it extends
        self._closed = False
        self._error: Optional[BaseException] = None
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._hash_loop, name=f"{algo}-download", daemon=True)
        self._thread.start()

    @staticmethod
    def seekable() -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = self._fh.seek(offset, whence)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        start = self._pos
        while view:  # a raw file may write less than asked
            n = self._fh.write(view)
            view = view[n:]
            self._pos += n
        end = self._pos
        with self._cv:
            first = self._ends.pop(start, start)  # extends a range (the usual case: a part streams in order)
            self._ranges[first] = max(end, self._ranges.get(first, end))
            self._ends[self._ranges[first]] = first
            self._cv.notify()
        return end - start

    def _hash_loop(self) -> None:
        try:
            while True:
                with self._cv:
                    while self._done not in self._ranges and not self._closed:
                        self._cv.wait()
                    if self._done not in self._ranges:
                        return
                    stop = self._ranges.pop(self._done)
                    self._ends.pop(stop, None)
                while self._done < stop:
                    chunk = os.pread(self._fd, min(stop - self._done, 8 * MiB), self._done)
                    if not chunk:
                        return
                    self._h.update(chunk)
                    self._done += len(chunk)
        except BaseException as exc:  # re-raised by hexdigest/close in the caller's thread
            self._error = exc

    def close(self) -> None:
        """Stop the hasher thread (idempotent); raises what it raised."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def hexdigest(self) -> str:
        self.close()
        size = os.fstat(self._fd).st_size
        if self._done != size or self._ranges:
            return file_digests(self._fh.name, (self._algo,))[self._algo]
        return self._h.hexdigest()


class Store:
    """One bucket of S3 object storage, with the run layout of DESIGN.md §3."""

    def __init__(self, cfg: StorageConfig, endpoint: str, access_key: str | None, secret_key: str | None,
                 region: str):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.cfg = cfg
        self.bucket = cfg.bucket
        self.endpoint = endpoint
        self.region = region
        self.prefix = str(cfg.prefix).strip("/")
        for part in self.prefix.split("/"):
            validate_name("storage prefix part", part)
        session = boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                                        region_name=region)
        # Integrity is end to end through the manifest's sha256 of every file (checked on every download), so
        # botocore's own per-request CRC32 and SigV4 payload hash are redundant passes over the bytes: they are
        # skipped where the server does not require them (benchmarks/bench_pipeline.py measures the difference)
        common: dict[str, Any] = {"signature_version": "s3v4",
                                  "s3": {"addressing_style": "path", "payload_signing_enabled": False},
                                  "request_checksum_calculation": "when_required",
                                  "response_checksum_validation": "when_required"}
        if urlparse(endpoint).hostname in ("127.0.0.1", "localhost", "::1"):
            common["proxies"] = {}  # a proxy cannot reach our loopback server, whatever $HTTP_PROXY says
        self.client = session.client("s3", endpoint_url=endpoint, config=Config(
            retries={"max_attempts": cfg.max_attempts, "mode": "standard"}, connect_timeout=5, read_timeout=60,
            **common))
        # check() must fail fast on a dead endpoint: one retry, short timeouts
        self._probe = session.client("s3", endpoint_url=endpoint, config=Config(
            retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=3, read_timeout=10, **common))
        threshold = int(cfg.multipart_threshold_mb * MiB)
        self.transfer_config = TransferConfig(
            multipart_threshold=threshold,
            multipart_chunksize=max(8 * MiB, min(threshold, 64 * MiB)),
            max_concurrency=4,
        )

    @classmethod
    def from_config(cls, cfg: StorageConfig, *, start_embedded: bool = False) -> Store:
        """A store for ``cfg``; with ``start_embedded`` the embedded server is started if nothing is set."""
        if start_embedded and not (cfg.endpoint or os.environ.get("S3_ENDPOINT_URL")):
            from ensemw2s import s3server

            try:
                s3server.ensure_running()
            except s3server.S3ServerError as exc:
                raise StorageError(f"cannot start the embedded S3 server: {exc}") from None
        return cls(cfg, *resolve_credentials(cfg))

    def __repr__(self) -> str:
        return f"Store(endpoint={self.endpoint!r}, bucket={self.bucket!r}, prefix={self.prefix!r})"

    # ----------------------------------------------------------------------------------- naming
    def key(self, run_id: str, step: str, *parts: str) -> str:
        """``<prefix>/<run_id>/<step>/<parts...>`` (names validated, parts may hold '/'-separated paths)."""
        validate_name("run id", run_id)
        validate_name("step name", step)
        for p in parts:
            _validate_relpath("key part", p)
        return "/".join([self.prefix, run_id, step, *parts])

    def uri(self, run_id: str, step: str, *parts: str) -> str:
        return self._uri(self.key(run_id, step, *parts))

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _where(self) -> str:
        return f"endpoint {self.endpoint}, bucket {self.bucket}"

    @contextlib.contextmanager
    def _errors(self, what: str, uri: str | None = None) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            target = uri or f"s3://{self.bucket}"
            raise StorageError(f"{what} failed: {target} ({self._where()}): {_cause(exc)}") from None

    # ------------------------------------------------------------------------------------ bucket
    def check(self, *, create: bool = True) -> None:
        """Make sure the endpoint answers, the credentials work and the bucket exists (created if allowed)."""
        from botocore.exceptions import BotoCoreError, ClientError

        def fail(cause: str) -> StorageError:
            hint = ""
            if "cannot connect" in cause and not (self.cfg.endpoint or os.environ.get("S3_ENDPOINT_URL")):
                hint = f"; {_embedded_hint()}"
            return StorageError(f"object storage check failed ({self._where()}): {cause}{hint}")

        try:
            self._probe.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
            return
        except ClientError as exc:
            code = _error_code(exc)
            # an HTTP status without an S3 error document: a bare 404 is a missing bucket if the endpoint
            # otherwise speaks S3 (some S3-compatible servers send no body, as every server does for a HEAD);
            # anything else bare is not an S3 API at all (a web server, a proxy's error page)
            if code.isdigit() and not (code == "404" and self._speaks_s3(exc)):
                meta = exc.response.get("ResponseMetadata", {})
                kind = (meta.get("HTTPHeaders") or {}).get("content-type", "no content type")
                raise fail(f"the endpoint does not answer like an S3 API (HTTP {code}, {kind}, no S3 error "
                           "code); check storage.endpoint / S3_ENDPOINT_URL") from None
            if code not in ("NoSuchBucket", "404"):
                raise fail(_cause(exc)) from None
        except BotoCoreError as exc:
            raise fail(_cause(exc)) from None
        except RecursionError:  # botocore follows a 301 without an S3 region header with another request, forever
            raise fail("the endpoint does not answer like an S3 API (it redirects every request, with no S3 "
                       "region); check storage.endpoint / S3_ENDPOINT_URL") from None
        if not create:  # reads never create a bucket: a typo'd name must not leave one behind
            why = "NoSuchBucket" if code == "NoSuchBucket" else f"HTTP {code} without an S3 error code"
            raise MissingObjectError(f"bucket {self.bucket!r} does not exist at {self.endpoint} ({why}); "
                                     "check storage.bucket (reading never creates a bucket)")
        try:
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if self.region and self.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            self._probe.create_bucket(**kwargs)
        except ClientError as exc:
            if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise fail(f"bucket does not exist and cannot be created: {_cause(exc)}") from None
        except BotoCoreError as exc:
            raise fail(_cause(exc)) from None

    def _speaks_s3(self, exc) -> bool:
        """Whether the endpoint, whose answer ``exc`` to the bucket was a bare HTTP status (no S3 error
        document), is an S3 API all the same: that answer carries S3 headers (``x-amz-request-id``,
        ``x-amz-id-2``, ...), or ``ListBuckets`` answers like S3 (its result, S3 headers, or an S3 error
        document such as AccessDenied for credentials that may not list buckets)."""
        from botocore.exceptions import BotoCoreError, ClientError

        def s3_headers(response: dict) -> bool:
            headers = (response.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
            return any(str(h).lower().startswith("x-amz-") for h in headers)

        if s3_headers(exc.response):
            return True
        try:
            resp = self._probe.list_buckets()
        except ClientError as other:
            return not _error_code(other).isdigit() or s3_headers(other.response)
        except (BotoCoreError, RecursionError):  # an HTML page that is not XML, a redirect loop, ...
            return False
        return "Owner" in resp or "Buckets" in resp or s3_headers(resp)

    # ------------------------------------------------------------------------------ single files
    def _exists(self, key: str) -> int | None:
        """Size of the object at ``key``, or None when it does not exist."""
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise

    def exists(self, run_id: str, step: str, *parts: str) -> bool:
        key = self.key(run_id, step, *parts)
        with self._errors("head", self._uri(key)):
            return self._exists(key) is not None

    def _upload(self, path: Path, key: str) -> None:
        with self._errors("upload", self._uri(key)):
            self.client.upload_file(str(path), self.bucket, key, Config=self.transfer_config)

    def _download(self, key: str, dest: Path, *, digest: Optional[str] = None) -> str | None:
        """Download ``key`` to ``dest``; with ``digest`` (a :data:`HASHES` name), return that digest of the bytes.

        The hashing download hashes the bytes in a thread while they are written (:class:`_HashingFile`),
        overlapping the transfer instead of re-reading the file after it. (s3transfer's own in-order path for
        non-seekable files was tried and hangs on objects of more than 10 parts in s3transfer 0.19.)
        ``benchmarks/bench_pipeline.py`` measures this against a plain ``download_file``.
        """
        from botocore.exceptions import ClientError

        try:
            with self._errors("download", self._uri(key)):
                try:
                    if digest is None:
                        self.client.download_file(self.bucket, key, str(dest), Config=self.transfer_config)
                        return None
                    with open(dest, "w+b", buffering=0) as fh:
                        sink = _HashingFile(fh, digest)
                        try:
                            self.client.download_fileobj(self.bucket, key, sink, Config=self.transfer_config)
                        finally:
                            sink.close()
                        return sink.hexdigest()
                except ClientError as exc:
                    if _is_not_found(exc):
                        raise FileNotFoundError(key) from None
                    raise
        except FileNotFoundError:
            raise MissingObjectError(f"missing object: {self._uri(key)} ({self._where()})") from None

    def put_file(self, local_path: str | os.PathLike, run_id: str, step: str, name: str) -> str:
        """Upload one file to ``<prefix>/<run_id>/<step>/<name>``; returns its URI."""
        path = Path(local_path)
        if not path.is_file():
            raise StorageError(f"cannot upload {path}: not a file")
        key = self.key(run_id, step, name)
        self._upload(path, key)
        return self._uri(key)

    def get_file(self, run_id: str, step: str, name: str, local_path: str | os.PathLike) -> Path:
        """Download one object to ``local_path`` (through a temp file, so a killed download leaves nothing)."""
        dest = Path(local_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        key = self.key(run_id, step, name)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        os.close(fd)
        try:
            self._download(key, Path(tmp))
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return dest

    # ------------------------------------------------------------------------------------- JSON
    @staticmethod
    def _json_name(name: str) -> str:
        validate_name("object name", name)
        return name if name.endswith(".json") else f"{name}.json"

    def put_json(self, run_id: str, step: str, name: str, obj: Any) -> str:
        key = self.key(run_id, step, self._json_name(name))
        body = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
        with self._errors("put", self._uri(key)):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")
        return self._uri(key)

    def get_json(self, run_id: str, step: str, name: str) -> Any:
        key = self.key(run_id, step, self._json_name(name))
        return self._get_json_key(key, missing=f"missing object: run {run_id}, step {step}, "
                                                f"name {name}, uri {self._uri(key)}")

    def _get_json_key(self, key: str, *, missing: str) -> Any:
        from botocore.exceptions import ClientError

        with self._errors("get", self._uri(key)):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if _is_not_found(exc):
                    raise MissingObjectError(f"{missing} ({self._where()})") from None
                raise
        try:
            return json.loads(body)
        except ValueError:
            raise CorruptArtifactError(f"corrupt JSON at {self._uri(key)} ({self._where()})") from None

    # -------------------------------------------------------------------------------- listings
    def _list(self, prefix: str, *, delimiter: str | None = None) -> Iterator[dict]:
        paginator = self.client.get_paginator("list_objects_v2")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        with self._errors("list", self._uri(prefix)):
            for page in paginator.paginate(**kwargs):
                for cp in page.get("CommonPrefixes", []) or []:
                    yield {"Prefix": cp["Prefix"]}
                yield from page.get("Contents", []) or []

    def _children(self, prefix: str) -> list[str]:
        names = {item["Prefix"][len(prefix):].rstrip("/") for item in self._list(prefix, delimiter="/")
                 if "Prefix" in item}
        return sorted(n for n in names if n)

    def list_runs(self) -> list[str]:
        return self._children(f"{self.prefix}/")

    def list_steps(self, run_id: str) -> list[str]:
        validate_name("run id", run_id)
        return self._children(f"{self.prefix}/{run_id}/")

    def list_outputs(self, run_id: str, step: str) -> list[str]:
        return self._children(self.key(run_id, step) + "/")

    def _delete_keys(self, keys: list[str], *, floor: str | None = None) -> int:
        """Delete ``keys`` in batches; returns how many. With ``floor`` (a prefix ending in '/'), the now
        empty folders between the keys and ``floor`` (inclusive) are removed too, deepest first: SeaweedFS
        keeps empty folders and lists them as common prefixes, unlike AWS (where this is a no-op)."""
        folders: set[str] = set()
        if floor:
            for k in keys:
                parts = k.split("/")[:-1]
                while parts and ("/".join(parts) + "/").startswith(floor):
                    folders.add("/".join(parts) + "/")
                    parts.pop()
        ordered = list(keys) + sorted(folders - set(keys), key=lambda f: (-f.count("/"), f))
        deleted = 0
        for i in range(0, len(ordered), _DELETE_BATCH):
            batch = ordered[i:i + _DELETE_BATCH]
            with self._errors("delete", self._uri(batch[0])):
                resp = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(f"delete failed for {len(errors)} object(s), e.g. "
                                   f"{self._uri(first.get('Key', ''))}: {first.get('Code')} ({self._where()})")
            deleted += sum(1 for k in batch if k not in folders)
        return deleted

    def delete_run(self, run_id: str) -> int:
        """Delete every object of a run (in batches of 1000); returns how many were deleted."""
        validate_name("run id", run_id)
        floor = f"{self.prefix}/{run_id}/"
        keys = [o["Key"] for o in self._list(floor) if "Key" in o]
        return self._delete_keys(keys, floor=floor)

    # ------------------------------------------------------------------------------- artifacts
    def _artifact_key(self, run_id: str, step: str, output: str) -> str:
        validate_name("output name", output)
        return self.key(run_id, step, output)

    def manifest_uri(self, run_id: str, step: str, output: str) -> str:
        return self._uri(f"{self._artifact_key(run_id, step, output)}/{MANIFEST}")

    def put_dir(self, local_dir: str | os.PathLike, run_id: str, step: str, output: str, *, producer: str,
                config_hash: str, extra: dict | None = None) -> dict:
        """Upload every file under ``local_dir`` as artifact ``output`` of ``step`` in ``run_id``.

        Order: old manifest deleted, files uploaded, stale files of an earlier upload deleted, manifest
        written last. Returns the manifest.
        """
        root = Path(local_dir)
        if not root.is_dir():
            raise StorageError(f"cannot upload {root}: not a directory")
        base = self._artifact_key(run_id, step, output)
        files = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            _validate_relpath("file path", rel)
            files.append((path, rel))
        manifest_key = f"{base}/{MANIFEST}"
        with self._errors("delete", self._uri(manifest_key)):
            self.client.delete_object(Bucket=self.bucket, Key=manifest_key)
        # checksums are computed in a thread beside the uploads (hashlib releases the GIL): hashing first and
        # uploading after cost 12 % of the upload throughput in benchmarks/bench_pipeline.py
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="checksums") as pool:
            hashes = [pool.submit(file_digests, path, ("sha256", "crc32c")) for path, _ in files]
            for path, rel in files:
                self._upload(path, f"{base}/{FILES}/{rel}")
            entries = [{"path": rel, "size": path.stat().st_size, **h.result()}
                       for (path, rel), h in zip(files, hashes)]
        wanted = {f"{base}/{FILES}/{e['path']}" for e in entries}
        stale = [o["Key"] for o in self._list(f"{base}/{FILES}/") if "Key" in o and o["Key"] not in wanted]
        if stale:
            self._delete_keys(stale, floor=f"{base}/{FILES}/")
        manifest = {
            "run_id": run_id, "step": step, "output": output, "producer": producer,
            "config_hash": config_hash, "created": _utcnow(), "files": entries, "extra": extra or {},
        }
        body = (json.dumps(manifest, indent=2) + "\n").encode()
        with self._errors("put manifest", self._uri(manifest_key)):
            self.client.put_object(Bucket=self.bucket, Key=manifest_key, Body=body, ContentType="application/json")
        return manifest

    def copy_run(self, src_run: str, dst_run: str, *, skip: tuple = ("run-summary",)) -> list[str]:
        """Server-side copy of every complete artifact of ``src_run`` into ``dst_run`` (a fork, to resume from).

        Each artifact's files are copied before its manifest, which records ``forked_from``; incomplete
        artifacts of the source are not copied. The forked run then resumes like any other: a step is
        reused only when its own config and its inputs' checksums match. Returns the copied ``step/output``s.
        """
        validate_name("run id", dst_run)
        if not self.list_steps(src_run):
            raise MissingObjectError(f"missing run: nothing stored under {self._uri(f'{self.prefix}/{src_run}/')} "
                                     f"({self._where()})")
        copied = []
        for step in self.list_steps(src_run):
            if step in skip:
                continue
            step_copied = False
            for output in self.list_outputs(src_run, step):
                if not self.is_complete(src_run, step, output):
                    continue
                manifest = self.get_manifest(src_run, step, output)
                src, dst = self._artifact_key(src_run, step, output), self._artifact_key(dst_run, step, output)
                for f in manifest["files"]:
                    with self._errors("copy", self._uri(f"{src}/{FILES}/{f['path']}")):
                        self.client.copy(CopySource={"Bucket": self.bucket, "Key": f"{src}/{FILES}/{f['path']}"},
                                         Bucket=self.bucket, Key=f"{dst}/{FILES}/{f['path']}",
                                         Config=self.transfer_config)
                body = json.dumps({**manifest, "run_id": dst_run, "forked_from": src_run}, indent=2) + "\n"
                with self._errors("put manifest", self._uri(f"{dst}/{MANIFEST}")):
                    self.client.put_object(Bucket=self.bucket, Key=f"{dst}/{MANIFEST}", Body=body.encode(),
                                           ContentType="application/json")
                copied.append(f"{step}/{output}")
                step_copied = True
            if step_copied:
                # the step's timing record goes along, so the fork knows what computing the step took
                with contextlib.suppress(MissingObjectError):
                    timing = self.get_json(src_run, step, "timing.json")
                    self.put_json(dst_run, step, "timing.json", {**timing, "forked_from": src_run})
        return copied

    def get_manifest(self, run_id: str, step: str, output: str) -> dict:
        base = self._artifact_key(run_id, step, output)
        manifest = self._get_json_key(f"{base}/{MANIFEST}", missing=(
            f"missing artifact: run {run_id}, step {step}, output {output}, uri {self._uri(base)}/"))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
            raise CorruptArtifactError(f"malformed manifest at {self._uri(base)}/{MANIFEST} ({self._where()})")
        return manifest

    def is_complete(self, run_id: str, step: str, output: str) -> bool:
        """True when the manifest exists and every file it lists exists with the listed size."""
        try:
            manifest = self.get_manifest(run_id, step, output)
        except (MissingObjectError, CorruptArtifactError):
            return False
        base = self._artifact_key(run_id, step, output)
        sizes = {o["Key"]: o.get("Size") for o in self._list(f"{base}/{FILES}/") if "Key" in o}
        return all(sizes.get(f"{base}/{FILES}/{e.get('path')}") == e.get("size") for e in manifest["files"])

    def get_dir(self, run_id: str, step: str, output: str, local_dir: str | os.PathLike) -> dict:
        """Download artifact ``output`` into ``local_dir``, verifying each file's size and checksum (the
        manifest's crc32c, computed while the bytes arrive; its sha256 for a manifest without one); returns the
        manifest.

        Files land in a temp dir next to ``local_dir`` that replaces it only when everything verified, so a
        killed or failed download never leaves a half-written ``local_dir``.
        """
        dest = Path(local_dir)
        manifest = self.get_manifest(run_id, step, output)
        base = self._artifact_key(run_id, step, output)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
        try:
            for entry in manifest["files"]:
                rel = _validate_relpath("manifest file path", str(entry.get("path", "")))
                target = tmp.joinpath(*PurePosixPath(rel).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                key = f"{base}/{FILES}/{rel}"
                algo = "crc32c" if entry.get("crc32c") else "sha256"
                try:
                    actual = self._download(key, target, digest=algo)
                except MissingObjectError:
                    raise StorageError(f"incomplete artifact: run {run_id}, step {step}, output {output}: "
                                       f"missing {self._uri(key)} ({self._where()})") from None
                size = target.stat().st_size
                if entry.get("size") is not None and size != entry["size"]:
                    raise CorruptArtifactError(f"size mismatch for {self._uri(key)}: expected {entry['size']} "
                                               f"bytes, got {size}")
                if actual != entry.get(algo):
                    raise CorruptArtifactError(f"checksum mismatch for {self._uri(key)}: expected {algo} "
                                               f"{entry.get(algo)}, got {actual}")
            self._replace_dir(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return manifest

    @staticmethod
    def _replace_dir(src: Path, dest: Path) -> None:
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        if not dest.exists():
            os.replace(src, dest)
            return
        with contextlib.suppress(OSError):  # an empty dir (e.g. one KFP created) is replaced directly
            os.rmdir(dest)
            os.replace(src, dest)
            return
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
        os.replace(src, dest)
        shutil.rmtree(old, ignore_errors=True)


def fetch_uri_folder(uri: str, *, cfg: Optional[StorageConfig] = None) -> Path:
    """Download every object under ``s3://bucket/some/folder/`` (e.g. a model) into the asset cache once;
    returns the local folder. The endpoint and credentials come from ``cfg`` / the environment as for runs."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
        raise StorageError(f"not an s3:// folder URI: {uri!r} (expected s3://bucket/path/to/folder)")
    bucket, prefix = parsed.netloc, parsed.path.strip("/") + "/"
    for part in prefix.strip("/").split("/"):
        validate_name("path part of " + uri, part)
    from ensemw2s import assets

    dest = assets.home() / "cache" / "s3" / bucket / prefix.strip("/")
    done = dest / ".ensemw2s-complete"
    if done.is_file():
        return dest
    base = cfg or StorageConfig()
    store = Store(dataclasses.replace(base, bucket=bucket), *resolve_credentials(base))
    keys = [o["Key"] for o in store._list(prefix) if "Key" in o and not o["Key"].endswith("/")]
    if not keys:
        raise MissingObjectError(f"missing artifact: no objects under {uri} ({store._where()})")
    tmp = dest.with_name(dest.name + ".part")
    if tmp.exists():
        shutil.rmtree(tmp)
    for k in keys:
        target = tmp / k[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        store._download(k, target)
    (tmp / done.name).write_text(uri)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest
