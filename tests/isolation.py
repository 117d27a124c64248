"""Keep the test suite away from the user's own runs, scratch and object storage.

A user runs ``make run`` and then ``make test`` in one clone with one ``ENSEMW2S_HOME``. That home holds the
assets the tests need (models, data, wheels) next to things the tests must never see or change: the local
records of the user's runs (``kfp-local/``), the step caches (``cache/``) and the embedded S3 server's state
and data (``s3/``). And the user's shell may point at their own object store (``S3_ENDPOINT_URL``, AWS keys or
profile files).

:func:`isolate` (called once, before any test is collected) gives the whole session, and every process it
starts, a home of its own: a temporary folder whose ``models/``, ``data/`` and ``wheels/`` entries are links to
the user's set-up assets (read by the tests, never written) and which has nothing else of the user's; it also
removes the user's S3/AWS settings from the environment (kept in :data:`SAVED_ENV` for the fixtures that take
an explicitly configured test endpoint, see tests/s3_fixtures.py). :func:`snapshot` records the user's home as
it stands (every file's size and mtime; while the user's embedded S3 server runs, its object listing instead
of its data files) so that the session can check, at its end, that nothing of it changed.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

# the asset folders of a home that tests read (tests/conftest.py ``tiny_assets``); nothing else is shared
ASSET_DIRS = ("models", "data", "wheels")
# the user's object-store and AWS settings; a test that wants an S3 server gets the suite's own
USER_ENV = ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
SAVED_ENV: dict[str, str] = {}


def isolate(user_home: Path) -> Path:
    """Point ``ENSEMW2S_HOME`` at a new test home linked to ``user_home``'s assets; returns the test home."""
    test_home = Path(tempfile.mkdtemp(prefix="ensemw2s-test-home-"))
    link_assets(user_home, test_home)
    for var in USER_ENV:
        if var in os.environ:
            SAVED_ENV[var] = os.environ.pop(var)
    # boto3 would otherwise read the user's ~/.aws files; these names do not exist
    os.environ["AWS_CONFIG_FILE"] = str(test_home / "no-aws-config")
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(test_home / "no-aws-credentials")
    os.environ["ENSEMW2S_HOME"] = str(test_home)
    return test_home


def link_assets(src_home: Path, dest_home: Path) -> None:
    """Make ``dest_home``'s ``models/``, ``data/`` and ``wheels/`` hold links to each entry of ``src_home``'s."""
    for kind in ASSET_DIRS:
        src = Path(src_home) / kind
        (Path(dest_home) / kind).mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            for entry in sorted(src.iterdir()):
                (Path(dest_home) / kind / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())


def release(test_home: Path) -> None:
    """Stop an embedded S3 server a test left running in the test home, then remove the test home (the links to
    the user's assets go, never what they point at)."""
    from ensemw2s import s3server

    with contextlib.suppress(Exception):
        s3server.stop(test_home)
    shutil.rmtree(test_home, ignore_errors=True)


def _object_listing(info) -> dict:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=info.endpoint, aws_access_key_id=info.access_key,
                          aws_secret_access_key=info.secret_key, region_name="us-east-1",
                          config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30))
    out = {}
    for b in client.list_buckets().get("Buckets", []):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=b["Name"]):
            for o in page.get("Contents", []):
                out[f"s3://{b['Name']}/{o['Key']}"] = (o["Size"], o.get("ETag"), o["LastModified"].isoformat())
        out[f"s3://{b['Name']}/"] = "bucket"
    return out


def snapshot(home: Path) -> dict:
    """What a test must not change in ``home``: every file and folder (size, mtime) and, while its embedded S3
    server runs, every bucket and object that server holds (its data folder then changes by itself)."""
    from ensemw2s import s3server

    home = Path(home)
    s3dir = home / "s3"
    running = None
    if (s3dir / s3server.STATE_FILE).is_file():  # never create anything in the user's home by looking
        running = s3server.status(home)
    objects = _object_listing(running) if running is not None else {}
    files = {}
    for root, dirs, names in os.walk(home):
        here = Path(root)
        if running is not None and here == s3dir:  # the live server's folder changes by itself (logs, data)
            dirs[:] = []
            continue
        for n in dirs + names:
            p = here / n
            with contextlib.suppress(FileNotFoundError):
                st = p.lstat()
                is_dir = p.is_dir() and not p.is_symlink()
                files[str(p.relative_to(home))] = ("dir", None) if is_dir else (st.st_size, st.st_mtime_ns)
    return {"files": files, "objects": objects}


def changes(before: dict, after: dict, *, limit: int = 20) -> list[str]:
    """Lines naming what differs between two :func:`snapshot`\\ s (empty: nothing changed)."""
    out = []
    for what in ("files", "objects"):
        a, b = before[what], after[what]
        out += [f"added {what[:-1]}: {k}" for k in sorted(b.keys() - a.keys())]
        out += [f"removed {what[:-1]}: {k}" for k in sorted(a.keys() - b.keys())]
        out += [f"changed {what[:-1]}: {k} {a[k]} -> {b[k]}" for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]
    return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])
