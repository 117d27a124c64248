"""Store.check against an S3-compatible server that answers a missing bucket with a bare HTTP 404 (no S3 error
document: every server does so for a HEAD, some for a GET too). That is a missing bucket, not "not an S3 API",
when the endpoint otherwise speaks S3: S3 headers on the 404, or a ListBuckets that answers like S3. A server
that does neither stays "not an S3 API" (the catalogue's s3-not-s3-api row, a plain web server)."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ensemw2s.config import StorageConfig
from ensemw2s.errors import MissingObjectError
from ensemw2s.storage import StorageError, Store

LIST_BUCKETS = (b'<?xml version="1.0" encoding="UTF-8"?>\n'
                b'<ListAllMyBucketsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                b"<Owner><ID>me</ID><DisplayName>me</DisplayName></Owner><Buckets></Buckets>"
                b"</ListAllMyBucketsResult>")


def _server(*, amz_headers: bool, list_buckets: bool) -> tuple[ThreadingHTTPServer, list[str]]:
    """Every bucket is missing (a bare 404, no body); ``amz_headers``: the 404 carries x-amz-request-id /
    x-amz-id-2; ``list_buckets``: ``GET /`` answers S3's ListAllMyBucketsResult (else a bare 404 too);
    ``PUT /<bucket>`` (CreateBucket) succeeds. Returns the server and the requests it saw."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _answer(self, status: int, body: bytes = b"", ctype: str | None = None) -> None:
            self.send_response(status)
            if amz_headers:
                self.send_header("x-amz-request-id", "4442587FB7D0A2F9")
                self.send_header("x-amz-id-2", "stub")
            if ctype:
                self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self):  # noqa: N802 - http.server's names
            seen.append(f"GET {self.path}")
            if self.path.split("?")[0] == "/" and list_buckets:
                self._answer(200, LIST_BUCKETS, "application/xml")
            else:
                self._answer(404)

        def do_HEAD(self):  # noqa: N802
            seen.append(f"HEAD {self.path}")
            self._answer(404)

        def do_PUT(self):  # noqa: N802
            seen.append(f"PUT {self.path}")
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._answer(200)

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler), seen


@pytest.fixture
def bare_404_server(request) -> Iterator[tuple[str, list[str]]]:
    srv, seen = _server(**request.param)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def _store(endpoint: str) -> Store:
    return Store(StorageConfig(bucket="ew2s-missing"), endpoint, "x", "y", "us-east-1")


S3_LIKE = [
    pytest.param({"amz_headers": True, "list_buckets": False}, id="s3-headers-on-the-404"),
    pytest.param({"amz_headers": False, "list_buckets": True}, id="list-buckets-answers"),
]


@pytest.mark.parametrize("bare_404_server", S3_LIKE, indirect=True)
def test_bare_404_of_an_s3_server_is_a_missing_bucket(bare_404_server):
    endpoint, seen = bare_404_server
    with pytest.raises(MissingObjectError) as err:
        _store(endpoint).check(create=False)
    msg = str(err.value)
    assert msg == (f"bucket 'ew2s-missing' does not exist at {endpoint} (HTTP 404 without an S3 error code); "
                   "check storage.bucket (reading never creates a bucket)"), msg
    assert "not answer like an S3 API" not in msg
    assert not any(r.startswith("PUT") for r in seen), seen  # a read never creates the bucket


@pytest.mark.parametrize("bare_404_server", S3_LIKE, indirect=True)
def test_bare_404_of_an_s3_server_creates_the_bucket(bare_404_server):
    endpoint, seen = bare_404_server
    _store(endpoint).check()  # create=True: the missing bucket is created, no error
    assert "PUT /ew2s-missing" in seen, seen


@pytest.mark.parametrize("bare_404_server", [{"amz_headers": False, "list_buckets": False}], indirect=True)
def test_bare_404_without_any_s3_sign_is_not_an_s3_api(bare_404_server):
    endpoint, seen = bare_404_server
    with pytest.raises(StorageError) as err:
        _store(endpoint).check(create=False)
    assert not isinstance(err.value, MissingObjectError)
    assert "the endpoint does not answer like an S3 API (HTTP 404, no content type, no S3 error code)" in str(
        err.value), err.value
    assert not any(r.startswith("PUT") for r in seen), seen
