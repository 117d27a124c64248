"""Bad-input catalogue: every case must fail with a clear, one-line message that names the key / row id /
URI / step, and a non-zero exit, before any expensive work (no server started, no model loaded, no pipeline).

The table ``CASES`` is the catalogue; ``docs/errors.md`` lists the same cases (checked below). Each case is
one of
- ``cli``:  ``python -m ensemw2s.cli ...`` in a subprocess (``isolated``: a fresh ENSEMW2S_HOME and no S3
  endpoint, so that starting the embedded server or the pipeline would leave a trace we assert is absent),
- ``step``: ``python -m ensemw2s.steps.<step> ...`` in a subprocess,
- ``api``:  a call into the package that must raise the named exception,
- a case of its own (``ctrl_c_run``: Ctrl-C to a running ``ensemw2s run``, exit 130).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\xff\xfe"  # a PNG header


# --------------------------------------------------------------------------------------------- helpers


class Ctx:
    """What a case needs: a scratch folder, the test S3 server (when the case asks for it), a store."""

    def __init__(self, tmp: Path, s3=None, store=None):
        self.tmp, self.s3, self.store = tmp, s3, store
        self.home = tmp / "home"  # isolated ENSEMW2S_HOME for cli cases
        self.home.mkdir(parents=True, exist_ok=True)
        self.marker = tmp / "PWNED"  # created only if a YAML tag or a pickle were executed

    def env(self, *, isolated: bool, s3: bool, **extra) -> dict:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
        }
        env.update(ENSEMW2S_PROGRESS="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        if isolated:
            env["ENSEMW2S_HOME"] = str(self.home)
        if s3:
            env.update(
                S3_ENDPOINT_URL=self.s3.endpoint,
                AWS_ACCESS_KEY_ID=self.s3.access_key,
                AWS_SECRET_ACCESS_KEY=self.s3.secret_key,
                AWS_DEFAULT_REGION="us-east-1",
            )
        env.update(extra)
        return env

    def write(self, name: str, text: str | bytes) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
        return p


@dataclass
class Outcome:
    code: int | None  # None: an API call (raised ``exc``)
    message: str
    seconds: float
    output: str = ""
    exc: BaseException | None = None
    pid: int | None = None  # a case that started a process group of its own: its leader (and group id)


def _proc(
    ctx: Ctx, module: str, args: list[str], *, isolated: bool = True, s3: bool = False, **env_extra
) -> Outcome:
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
        env=ctx.env(isolated=isolated, s3=s3, **env_extra),
    )
    # the message: the last stderr line (it must be the one-line "error: ..." the commands promise)
    message = (res.stderr.strip().splitlines() or [""])[-1]
    return Outcome(res.returncode, message, time.perf_counter() - t0, res.stdout + res.stderr)


def cli(*args, **kw) -> Callable[[Ctx], Outcome]:
    return lambda ctx: _proc(ctx, "ensemw2s.cli", [a(ctx) if callable(a) else a for a in args], **kw)


def step(name: str, *args, **kw) -> Callable[[Ctx], Outcome]:
    return lambda ctx: _proc(
        ctx, f"ensemw2s.steps.{name}", [a(ctx) if callable(a) else a for a in args], **kw
    )


def api(fn: Callable[[Ctx], object]) -> Callable[[Ctx], Outcome]:
    def run(ctx: Ctx) -> Outcome:
        t0 = time.perf_counter()
        try:
            fn(ctx)
        except Exception as exc:  # noqa: BLE001 - the case checks the type
            return Outcome(None, str(exc), time.perf_counter() - t0, exc=exc)
        return Outcome(None, "<no exception>", time.perf_counter() - t0)

    return run


def run_cli(config_text: str, *extra: str) -> Callable[[Ctx], Outcome]:
    """``ensemw2s run --config <file with config_text>`` in an isolated home."""

    def run(ctx: Ctx) -> Outcome:
        cfg = ctx.write("bad.yaml", config_text.replace("@MARKER@", str(ctx.marker)))
        return _proc(ctx, "ensemw2s.cli", ["run", "--config", cfg, "--run-id", "catalogue", *extra])

    return run


def run_set(*overrides: str, **kw) -> Callable[[Ctx], Outcome]:
    """``ensemw2s run --config configs/tiny.yaml --set ...`` in an isolated home (or ``isolated=False``)."""

    def run(ctx: Ctx) -> Outcome:
        args = ["run", "--config", TINY, "--run-id", "catalogue"]
        for o in overrides:
            args += ["--set", o(ctx) if callable(o) else o]
        return _proc(ctx, "ensemw2s.cli", args, **kw)

    return run


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass


@contextlib.contextmanager
def plain_web_server(root: Path) -> Iterator[str]:
    """A plain web server (neither S3 nor KFP: ``http.server`` serving ``root``) on a free loopback port."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def cli_at_web_server(*args, folders: tuple[str, ...] = (), **kw) -> Callable[[Ctx], Outcome]:
    """``ensemw2s ...`` with ``@URL@`` in ``args`` replaced by a plain web server's URL; it serves an empty
    folder, holding only ``folders`` (each with an index.html)."""

    def run(ctx: Ctx) -> Outcome:
        root = ctx.tmp / "www"
        root.mkdir(parents=True, exist_ok=True)
        for f in folders:
            ctx.write(f"www/{f}/index.html", "<html>hello</html>\n")
        with plain_web_server(root) as url:
            return _proc(ctx, "ensemw2s.cli", [a.replace("@URL@", url) for a in args], **kw)

    return run


# ----------------------------------------------------------------------------------------- fixtures


def without(r: dict, key: str) -> dict:
    return {k: v for k, v in r.items() if k != key}


def load_model_of(folder_fn: Callable[[Ctx], Path]) -> Callable[[Ctx], object]:
    def call(ctx):
        from ensemw2s.modeling import load_causal_lm

        return load_causal_lm(str(folder_fn(ctx)))

    return call


def row(i: int, **over) -> dict:
    r = {
        "id": f"q{i}",
        "question": f"Which number is {i}?",
        "choices": [str(i), str(i + 1), str(i + 2)],
        "answer": str(i),
        "answer_index": 0,
        "difficulty": float(i % 2),
        "source": "test",
    }
    r.update(over)
    return r


def jsonl(ctx: Ctx, name: str, rows: list, *, tail: str = "") -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows) + tail
    return ctx.write(name, text)


def read_jsonl_of(rows_fn: Callable[[Ctx], Path]) -> Callable[[Ctx], object]:
    def call(ctx):
        from ensemw2s.data import read_jsonl

        return read_jsonl(rows_fn(ctx))

    return call


def jsonl_dataset(rows_fn: Callable[[Ctx], Path], **cfg) -> Callable[[Ctx], object]:
    """Load rows through the ``jsonl`` dataset (``data.easy: jsonl``, ``data.jsonl_path``)."""

    def call(ctx):
        from ensemw2s.assets import load_side
        from ensemw2s.config import DataConfig

        return load_side(DataConfig(easy="jsonl", hard="jsonl", jsonl_path=str(rows_fn(ctx)), **cfg), "easy")

    return call


def empty_split(ctx: Ctx) -> object:
    from ensemw2s.assets import load_side
    from ensemw2s.config import DataConfig
    from ensemw2s.data import split_rows

    cfg = DataConfig(
        easy="jsonl",
        hard="jsonl",
        difficulty="random",
        max_choices=2,
        jsonl_path=str(jsonl(ctx, "d.jsonl", [row(i) for i in range(6)])),
    )
    return split_rows(cfg, load_side(cfg, "easy"), None, 0)


def tiny_model_dir() -> Path:
    from ensemw2s import assets

    return assets.home() / "models" / "tiny-weak"


def model_folder(ctx: Ctx, name: str, files: dict[str, bytes | Path]) -> Path:
    """A model folder: tiny-weak's config.json plus ``files`` (bytes, or a file to copy)."""
    d = ctx.tmp / name
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_model_dir() / "config.json", d / "config.json")
    for fname, content in files.items():
        if isinstance(content, Path):
            shutil.copy(content, d / fname)
        else:
            (d / fname).write_bytes(content)
    return d


class _Boom:
    """Unpickling this creates ``path``: proof that a pickle was executed."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def pickle_bytes(ctx: Ctx) -> bytes:
    return pickle.dumps({"model.embed_tokens.weight": _Boom(ctx.marker)})


def truncated(ctx: Ctx) -> bytes:
    data = (tiny_model_dir() / "model.safetensors").read_bytes()
    return data[: len(data) // 3]


def mixed_tokenizer_model(ctx: Ctx) -> Path:
    """tiny-weak's config with Gemma-3's tokenizer: a model whose tokenizer differs from SmolLM2's."""
    from ensemw2s import assets

    gemma = assets.home() / "models" / "gemma3-270m"
    d = model_folder(
        ctx,
        "gemma-tok-model",
        {
            "tokenizer.json": gemma / "tokenizer.json",
            "tokenizer_config.json": gemma / "tokenizer_config.json",
        },
    )
    return d


def expert_inputs(ctx: Ctx, weak_model: str, tokenizer_signature: str) -> tuple[Path, Path]:
    """Local ``splits/`` and round-1 ``state/`` folders for train_expert (as split_data would write them)."""
    from ensemw2s.modeling import load_tokenizer
    from ensemw2s.training import encode_rows

    rows = [row(i) for i in range(4)]
    splits = ctx.tmp / "splits"
    state = ctx.tmp / "state"
    jsonl(ctx, "splits/easy_train.jsonl", rows)
    # D_1 = 1/n per answer token (SmolLM2's tokenizer, the tiny models'), as split_data writes it
    enc = encode_rows(load_tokenizer(str(tiny_model_dir())), rows, 160)
    n = sum(e.n_answer for e in enc)
    jsonl(
        ctx,
        "state/weights.jsonl",
        [{"id": e.id, "weights": [1 / n] * e.n_answer, "base_wrong": [1] + [0] * (e.n_answer - 1)} for e in enc],
    )
    ctx.write(
        "state/state.json",
        json.dumps(
            {
                "round": 1,
                "stopped": False,
                "experts": [],
                "n_tokens": n,
                "weak_model": weak_model,
                "tokenizer": tokenizer_signature,
                "vocab_size": 49152,
                "max_length": 160,
            }
        ),
    )
    return splits, state


def smollm2_signature() -> str:
    from ensemw2s.modeling import load_tokenizer, tokenizer_signature

    return tokenizer_signature(load_tokenizer(str(tiny_model_dir())))


def train_expert_with(model_fn: Callable[[Ctx], str], state_model_fn: Callable[[Ctx], str], *overrides: str):
    """The real train_expert step (round 1, local folders from :func:`expert_inputs`) of configs/tiny.yaml with
    ``experts.model`` = ``model_fn(ctx)``, a state made for ``state_model_fn(ctx)`` and ``--set overrides``."""

    def run(ctx: Ctx) -> Outcome:
        model = model_fn(ctx)
        splits, state = expert_inputs(ctx, state_model_fn(ctx), smollm2_signature())
        sets = [x for o in overrides for x in ("--set", o)]
        return _proc(
            ctx,
            "ensemw2s.steps.train_expert",
            [
                "--config",
                TINY,
                "--set",
                f"experts.model={model}",
                *sets,
                "--round",
                "1",
                "--splits",
                splits,
                "--state",
                state,
                "--expert",
                ctx.tmp / "expert-out",
            ],
            isolated=False,
        )

    return run


def nothing_saved(ctx: Ctx, out: Outcome) -> None:
    """train_expert wrote no adapter, no model and no expert.json (a diverged expert is never saved)."""
    expert = ctx.tmp / "expert-out"
    left = sorted(p.relative_to(expert).as_posix() for p in expert.rglob("*")) if expert.exists() else []
    assert not left, f"a diverged expert left {left} in {expert}"


CTRL_C_RUN = "ctrl-c"


def ctrl_c_run(ctx: Ctx) -> Outcome:
    """``ensemw2s run --config configs/tiny.yaml`` against the test S3 server, in a process group of its own; once
    train_expert-r1 has started, SIGINT to the whole group, as a terminal sends it for Ctrl-C."""
    args = [sys.executable, "-m", "ensemw2s.cli", "run", "--config", "configs/tiny.yaml", "--run-id", CTRL_C_RUN,
            "--set", f"storage.bucket={ctx.store.bucket}"]
    t0 = time.perf_counter()
    # as from a terminal: SIGINT at its default action. A suite started in the background (`make test &`, some CI
    # shells) inherits SIGINT ignored, and an ignored SIGINT stays ignored across exec, so Python would never
    # raise KeyboardInterrupt in the run
    p = subprocess.Popen(args, cwd=REPO, env=ctx.env(isolated=False, s3=True), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    err: list[str] = []
    started = threading.Event()

    def read_out():
        for line in p.stdout:
            lines.append(line)
            if "train_expert-r1" in line and "started" in line:
                started.set()

    readers = [threading.Thread(target=read_out, daemon=True),
               threading.Thread(target=lambda: err.extend(p.stderr), daemon=True)]
    for r in readers:
        r.start()
    try:
        if not started.wait(300):
            pytest.fail("train_expert-r1 never started:\n" + "".join(lines) + "".join(err))
        time.sleep(2)  # inside the step (its model is loading or training)
        os.killpg(p.pid, signal.SIGINT)
        rc = p.wait(timeout=120)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise
    for r in readers:
        r.join(10)
    stderr = "".join(err)
    message = (stderr.strip().splitlines() or [""])[-1]
    return Outcome(rc, message, time.perf_counter() - t0, "".join(lines) + stderr, pid=p.pid)


def _group_alive(pgid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=,pgid=,args=", "-e"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if ln.split()[1:2] == [str(pgid)]]


def ctrl_c_checks(ctx: Ctx, out: Outcome) -> None:
    """Beyond exit 130, one ``error:`` line and no traceback: the line says how to resume, no process of the run
    survives, the run is recorded as interrupted (status.json, ``runs list``) with the steps done before."""
    run_id, store = CTRL_C_RUN, ctx.store
    assert "KeyboardInterrupt" not in out.output, out.output
    assert out.message.startswith(f"error: run {run_id} interrupted (Ctrl-C)"), out.output
    assert out.message.endswith(f"Resume with: ensemw2s run --run-id {run_id} --config configs/tiny.yaml"), out.output
    deadline = time.time() + 20
    while _group_alive(out.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert not _group_alive(out.pid), "processes of the run survived Ctrl-C"
    status = store.get_json(run_id, "run-summary", "status.json")
    assert status["status"] == "interrupted" and "train_expert-r1" in status["steps"], status
    assert store.exists(run_id, "split_data", "timing.json")
    assert not store.exists(run_id, "train_expert-r1", "timing.json")
    listing = subprocess.run([sys.executable, "-m", "ensemw2s.cli", "runs", "list", "--config", "configs/tiny.yaml",
                              "--set", f"storage.bucket={store.bucket}"], cwd=REPO,
                             env=ctx.env(isolated=False, s3=True), capture_output=True, text=True,
                             check=True).stdout
    row = next(ln for ln in listing.splitlines() if ln.startswith(run_id))
    done = sum(store.exists(run_id, s, "timing.json") for s in store.list_steps(run_id))
    assert f"interrupted ({done}/17 steps done)" in row and done >= 1, listing


def corrupt_artifact(ctx: Ctx) -> None:
    """Upload an artifact, replace one file's object with other bytes of the same size, download it."""
    src = ctx.tmp / "art"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.bin").write_bytes(b"\x00" * 64)
    ctx.store.put_dir(src, "run-c", "train_expert-r1", "expert", producer="test", config_hash="x")
    key = ctx.store.key("run-c", "train_expert-r1", "expert", "files", "sub/b.bin")
    ctx.store.client.put_object(Bucket=ctx.store.bucket, Key=key, Body=b"\x01" * 64)
    assert ctx.store.is_complete("run-c", "train_expert-r1", "expert")  # sizes match: only sha256 can tell
    ctx.store.get_dir("run-c", "train_expert-r1", "expert", ctx.tmp / "downloaded")


def incomplete_artifact(ctx: Ctx) -> None:
    src = ctx.tmp / "art"
    src.mkdir()
    (src / "a.txt").write_text("alpha\n")
    (src / "b.txt").write_text("beta\n")
    ctx.store.put_dir(src, "run-i", "update_weights-r1", "state", producer="test", config_hash="x")
    ctx.store.client.delete_object(
        Bucket=ctx.store.bucket, Key=ctx.store.key("run-i", "update_weights-r1", "state", "files", "b.txt")
    )
    assert not ctx.store.is_complete("run-i", "update_weights-r1", "state")
    ctx.store.get_dir("run-i", "update_weights-r1", "state", ctx.tmp / "downloaded")


def wrong_credentials(ctx: Ctx) -> None:
    from ensemw2s.config import StorageConfig
    from ensemw2s.storage import Store

    Store(
        StorageConfig(bucket=ctx.store.bucket),
        ctx.s3.endpoint,
        ctx.s3.access_key,
        "not-the-secret",
        "us-east-1",
    ).check()


def missing_bucket(ctx: Ctx) -> None:
    from ensemw2s.config import StorageConfig
    from ensemw2s.storage import Store

    Store(
        StorageConfig(bucket="ew2s-no-such-bucket-7f3a"),
        ctx.s3.endpoint,
        ctx.s3.access_key,
        ctx.s3.secret_key,
        "us-east-1",
    ).check(create=False)


def validate(kind: str, value: str) -> Callable[[Ctx], object]:
    def call(ctx):
        from ensemw2s.storage import validate_name

        return validate_name(kind, value)

    return call


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """Billion laughs under ``resources.tolerations``: each anchor a list of ``width`` aliases of the one before
    (``width ** levels`` values once expanded)."""
    names = [f"l{i}" for i in range(levels)]
    lines = ["resources:", "  tolerations:", f"    {names[0]}: &{names[0]} [{', '.join(['x'] * width)}]"]
    for prev, cur in zip(names, names[1:]):
        lines.append(f"    {cur}: &{cur} [{', '.join([f'*{prev}'] * width)}]")
    return "\n".join(lines) + "\n"


def deep_yaml(depth: int = 40) -> str:
    return f"resources:\n  tolerations: {'[' * depth}x{']' * depth}\n"


def compile_config(name: str, text: str) -> Callable[[Ctx], Outcome]:
    """``ensemw2s compile --config <file with text> -o out.yaml`` in an isolated home."""
    return cli("compile", "--config", lambda c: c.write(name, text), "-o", lambda c: c.tmp / "out.yaml")


def split_step(*overrides, **kw) -> Callable[[Ctx], Outcome]:
    """``python -m ensemw2s.steps.split_data --config configs/tiny.yaml --set ...`` with the real assets."""
    sets = [x for o in overrides for x in ("--set", o)]
    out = ("--splits", lambda c: c.tmp / "s", "--state", lambda c: c.tmp / "t")
    return step("split_data", "--config", TINY, *sets, *out, isolated=False, **kw)


def jsonl_path(name: str, n: int) -> Callable[[Ctx], str]:
    return lambda c: f"data.jsonl_path={jsonl(c, name, [row(i) for i in range(n)])}"


def faster_than(seconds: float) -> Callable[[Ctx, Outcome], None]:
    def check(ctx: Ctx, out: Outcome) -> None:
        assert out.seconds < seconds, f"took {out.seconds:.1f} s (>= {seconds} s)"

    return check


def short_message(limit: int) -> Callable[[Ctx, Outcome], None]:
    def check(ctx: Ctx, out: Outcome) -> None:
        assert len(out.message) < limit, f"a message of {len(out.message)} characters"
        assert "a" * 100 not in out.output, "the value was echoed in full"

    return check


def no_regex_dump(ctx: Ctx, out: Outcome) -> None:
    assert "Invalid bucket name" not in out.output and "^[a-zA-Z0-9" not in out.output, out.output


def bucket_not_created(name: str) -> Callable[[Ctx, Outcome], None]:
    def check(ctx: Ctx, out: Outcome) -> None:
        names = {b["Name"] for b in ctx.store.client.list_buckets().get("Buckets", [])}
        assert name not in names, f"a read created the bucket {name!r}"

    return check


def split_counts(ctx: Ctx, out: Outcome) -> None:
    import re

    assert re.search(r"rows needed but only \d+ available", out.message), out.message
    assert re.search(r"\d+ easy rows read after filtering", out.message), out.message


# --------------------------------------------------------------------------------------------- table


@dataclass
class Case:
    id: str
    input: str  # what the user did (docs/errors.md)
    run: Callable[[Ctx], Outcome]
    code: int | None  # expected exit code; None for an API case
    expect: tuple[str, ...]  # substrings of the message
    exc: str | None = None  # API: exception class name (or a base class name)
    s3: bool = False  # needs the test S3 server
    no_trace: bool = True  # isolated cli case: no server started, no pipeline folder created
    extra: Callable[[Ctx, Outcome], None] | None = field(default=None, repr=False)
    marks: tuple = ()  # pytest marks of this row (``s3`` is added for ``s3=True``)


def _not_executed(ctx: Ctx, out: Outcome) -> None:
    assert not ctx.marker.exists(), "the payload was executed"


# fmt: off
CASES: list[Case] = [
    # ---------------------------------------------------------------- config (ensemw2s run, exit 2)
    Case("config-unknown-key", "unknown key in the YAML (`experts: {modle: x}`)",
         run_cli("experts:\n  modle: x\n"), 2, ("unknown config key 'experts.modle'", "allowed keys in experts")),
    Case("config-unknown-section", "unknown section in `--set` (`boostng.rounds=3`)",
         run_set("boostng.rounds=3"), 2, ("unknown config key 'boostng'",)),
    Case("config-wrong-type-int", "wrong type (`boosting.rounds=three`)",
         run_set("boosting.rounds=three"), 2, ("boosting.rounds", "expected an integer")),
    Case("config-wrong-type-float", "wrong type (`experts.train.lr=fast`)",
         run_set("experts.train.lr=fast"), 2, ("experts.train.lr", "expected a number")),
    Case("config-rounds-zero", "`boosting.rounds=0`",
         run_set("boosting.rounds=0"), 2, ("boosting.rounds", "out of range", ">= 1")),
    Case("config-negative-lr", "`experts.train.lr=-0.001`",
         run_set("experts.train.lr=-0.001"), 2, ("experts.train.lr", "out of range", "> 0")),
    Case("config-empty-model", "empty model name (`experts.model=`)",
         run_set("experts.model="), 2, ("experts.model", "non-empty string")),
    Case("config-batch-zero", "`student.train.batch_size=0`",
         run_set("student.train.batch_size=0"), 2, ("student.train.batch_size", "out of range")),
    Case("config-bad-choice", "unknown option value (`boosting.alpha_rule=adaboost`)",
         run_set("boosting.alpha_rule=adaboost"), 2, ("boosting.alpha_rule", "allowed values", "prior", "samme")),
    Case("config-unknown-dataset", "unknown dataset (`data.hard=nosuchdata`)",
         run_set("data.hard=nosuchdata"), 2, ("data.hard", "'nosuchdata'", "allowed values", "arc_easy", "sciq")),
    Case("config-unknown-model", "unknown model (`experts.model=nosuchmodel`)",
         run_set("experts.model=nosuchmodel"), 2,
         ("experts.model", "unknown model 'nosuchmodel'", "smollm2-135m", "gemma3-270m", "tiny-weak")),
    Case("config-jsonl-without-path", "`data.easy=jsonl` without `data.jsonl_path`",
         run_set("data.easy=jsonl"), 2, ("data.jsonl_path", "required when data.easy is 'jsonl'")),
    Case("config-endpoint-scheme", "`storage.endpoint=localhost:9000` (no scheme)",
         run_set("storage.endpoint=localhost:9000"), 2, ("storage.endpoint", "http://")),
    Case("config-file-missing", "`--config` names a missing file",
         cli("run", "--config", lambda c: str(c.tmp / "nope.yaml")), 2, ("config file not found", "nope.yaml")),
    Case("config-set-syntax", "`--set boosting.rounds` (no `=`)",
         run_set("boosting.rounds"), 2, ("--set 'boosting.rounds'", "KEY=VALUE")),
    Case("config-not-mapping", "a YAML file whose top level is a list",
         run_cli("- seed\n- 1\n"), 2, ("bad.yaml", "top level must be a mapping")),
    Case("config-yaml-python-tag", "a YAML file with a Python object tag (`!!python/object/apply:os.mkdir`)",
         run_cli("seed: !!python/object/apply:os.mkdir ['@MARKER@']\n"), 2,
         ("bad.yaml", "not valid YAML", "no object tags"), extra=_not_executed),
    Case("config-binary-file", "`--config` names a binary file (a PNG image)",
         cli("run", "--config", lambda c: c.write("logo.png", PNG), "--run-id", "catalogue"), 2,
         ("logo.png", "not a YAML text file", "not valid UTF-8")),
    Case("config-nul-bytes", "a config file holding NUL bytes",
         cli("run", "--config", lambda c: c.write("nul.yaml", b"seed: 1\n\x00\x00\n"), "--run-id", "catalogue"), 2,
         ("nul.yaml", "not a YAML text file", "NUL bytes")),
    Case("config-duplicate-key", "a key given twice in one mapping of the YAML",
         run_cli("boosting:\n  rounds: 2\n  rounds: 3\n"), 2, ("bad.yaml", "line 3", "key 'rounds' is given twice")),
    Case("config-yaml-alias-bomb", "an alias bomb (9 levels of 9 aliases) under `resources.tolerations`",
         compile_config("bomb.yaml", alias_bomb()), 2, ("bomb.yaml", "expands to more than", "alias"),
         extra=faster_than(10)),
    Case("config-yaml-too-deep", "YAML nested 40 levels deep",
         compile_config("deep.yaml", deep_yaml(40)), 2, ("deep.yaml", "nested more than 32 levels deep")),
    Case("config-yaml-recursion", "YAML nested 5000 levels deep (deeper than the parser's recursion)",
         compile_config("deeper.yaml", deep_yaml(5000)), 2, ("deeper.yaml", "nested too deeply"),
         extra=faster_than(10)),
    Case("config-model-name-too-long", "a 20 000-character model name (`experts.model=aaaa…`)",
         run_set("experts.model=" + "a" * 20000), 2,
         ("experts.model", "(20000 characters) is not a model name", "at most 1024 characters"),
         extra=short_message(400)),
    Case("config-lr-nan", "`experts.train.lr=nan`",
         run_set("experts.train.lr=nan"), 2, ("experts.train.lr", "expected a finite number", "nan")),
    Case("config-lr-inf", "`experts.train.lr=inf`",
         run_set("experts.train.lr=inf"), 2, ("experts.train.lr", "expected a finite number", "inf")),
    Case("config-max-length-tiny", "`experts.train.max_length=1`",
         run_set("experts.train.max_length=1"), 2, ("experts.train.max_length", "out of range", ">= 16")),
    Case("config-bad-bucket-name", "`storage.bucket=My_Bucket` (not an S3 bucket name)",
         run_set("storage.bucket=My_Bucket"), 2, ("storage.bucket", "'My_Bucket'", "not an S3 bucket name"),
         extra=no_regex_dump),
    Case("env-endpoint-not-url", "`S3_ENDPOINT_URL=notaurl` (`ensemw2s runs list`)",
         cli("runs", "list", "--config", TINY, S3_ENDPOINT_URL="notaurl"), 2,
         ("S3_ENDPOINT_URL", "'notaurl'", "http://")),
    Case("compile-output-is-folder", "`ensemw2s compile -o <an existing folder>`",
         cli("compile", "--config", TINY, "-o", lambda c: c.write("outdir/keep", "").parent), 2,
         ("-o", "outdir", "is a folder", "pipeline.yaml")),
    Case("runs-log-tail-negative", "`ensemw2s runs log RUN STEP --tail -5`",
         cli("runs", "log", "r1", "split_data", "--tail", "-5"), 2, ("--tail", "-5", ">= 1")),
    Case("runs-log-tail-zero", "`ensemw2s runs log RUN STEP --tail 0`",
         cli("runs", "log", "r1", "split_data", "--tail", "0"), 2, ("--tail", "0 is out of range", ">= 1")),
    Case("runs-page-output-is-file", "`ensemw2s runs page -o <an existing file>` (no S3 endpoint: checked first)",
         cli("runs", "page", "-o", lambda c: c.write("page.html", "x\n"), "--config", TINY), 2,
         ("-o", "page.html", "exists and is not a folder"), extra=faster_than(10)),
    Case("runs-page-output-under-file", "`ensemw2s runs page -o page.html/site` (a file where a folder should be)",
         cli("runs", "page", "-o", lambda c: c.write("page.html", "x\n") / "site", "--config", TINY), 2,
         ("-o", "page.html/site", "page.html is a file, not a folder")),
    Case("step-round-out-of-range", "`train_expert --round 5` with `boosting.rounds: 2`",
         step("train_expert", "--config", TINY, "--round", "5", "--splits", lambda c: c.tmp / "s", "--state",
              lambda c: c.tmp / "t", "--expert", lambda c: c.tmp / "e"),
         2, ("--round 5", "out of range", "boosting.rounds is 2")),
    # ---------------------------------------------------------------- names (run ids, steps, keys)
    Case("run-id-dotdot", "`ensemw2s run --run-id ../x`",
         cli("run", "--config", TINY, "--run-id", "../x"), 1, ("invalid run id '../x'", "without '..'")),
    Case("run-id-empty", "`ensemw2s run --run-id \"\"`",
         cli("run", "--config", TINY, "--run-id", ""), 1, ("invalid run id ''",)),
    Case("run-id-trailing-dot", "`ensemw2s run --run-id x.`",
         cli("run", "--config", TINY, "--run-id", "x."), 1, ("invalid run id 'x.'", "not ending in '.'")),
    Case("run-id-slash", "run id `a/b` (storage.validate_name)",
         api(validate("run id", "a/b")), None, ("invalid run id 'a/b'",), exc="StorageError"),
    Case("run-id-control-char", "run id with a control character (`a\\x1bb`)",
         api(validate("run id", "a\x1bb")), None, ("invalid run id",), exc="StorageError"),
    Case("step-name-dotdot", "step name `train..r1`",
         api(validate("step name", "train..r1")), None, ("invalid step name 'train..r1'",), exc="StorageError"),
    Case("key-part-traversal", "artifact path `../../etc/passwd` inside a run",
         api(lambda c: c.store.key("r1", "split_data", "../../etc/passwd")), None,
         ("invalid key part", "'..'"), exc="StorageError", s3=True),
    # ---------------------------------------------------------------- data rows (JSONL)
    Case("jsonl-missing-field", "a JSONL row without `answer`",
         api(read_jsonl_of(lambda c: jsonl(c, "d.jsonl", [row(1), without(row(2), "answer")]))),
         None, ("d.jsonl:2", "row 'q2'", "missing field(s) answer"), exc="DataError"),
    Case("jsonl-answer-index-range", "`answer_index` 7 for 3 choices",
         api(read_jsonl_of(lambda c: jsonl(c, "d.jsonl", [row(1, answer_index=7)]))),
         None, ("d.jsonl:1", "row 'q1'", "answer_index 7 is out of range for 3 choices"), exc="DataError"),
    Case("jsonl-empty-choices", "`choices: []`",
         api(read_jsonl_of(lambda c: jsonl(c, "d.jsonl", [row(1, choices=[], answer_index=None)]))),
         None, ("d.jsonl:1", "row 'q1'", "empty choices"), exc="DataError"),
    Case("jsonl-one-choice", "a row with a single choice",
         api(read_jsonl_of(lambda c: jsonl(c, "d.jsonl", [row(1), row(2, choices=["2"])]))),
         None, ("d.jsonl:2", "row 'q2'", "has 1 choice", "at least 2"), exc="DataError"),
    Case("jsonl-duplicate-choices", "a row with the same option twice",
         api(read_jsonl_of(lambda c: jsonl(c, "d.jsonl", [row(1, choices=["1", "2", "1"])]))),
         None, ("d.jsonl:1", "row 'q1'", "duplicate choices ('1' twice)"), exc="DataError"),
    Case("jsonl-answer-index-string", "`answer_index: \"1\"` (a string)",
         api(read_jsonl_of(lambda c: jsonl(c, "d.jsonl", [row(1, answer_index="1")]))),
         None, ("d.jsonl:1", "row 'q1'", "answer_index must be an integer", "'1' (str)"), exc="DataError"),
    Case("jsonl-duplicate-id", "two rows with the same id",
         api(read_jsonl_of(lambda c: jsonl(c, "d.jsonl", [row(1), row(2), row(3, id="q1")]))),
         None, ("d.jsonl", "duplicate id 'q1'", "line 3"), exc="DataError"),
    Case("jsonl-invalid-utf8", "bytes that are not UTF-8",
         api(read_jsonl_of(lambda c: c.write("d.jsonl", json.dumps(row(1)).encode() + b"\n\xff\xfe{\n"))),
         None, ("d.jsonl", "not valid UTF-8"), exc="DataError"),
    Case("jsonl-truncated", "a file cut off in the middle of a row",
         api(read_jsonl_of(lambda c: jsonl(c, "d.jsonl", [row(1)], tail=json.dumps(row(2))[:40]))),
         None, ("d.jsonl", "line 2", "not valid JSON (truncated file?)"), exc="DataError"),
    Case("jsonl-dataset-bad-row", "`data.easy: jsonl` whose file has a row with answer != choices[answer_index]",
         api(jsonl_dataset(lambda c: jsonl(c, "d.jsonl", [row(1), row(2, answer="nine")]))),
         None, ("d.jsonl:2", "row 'q2'", "answer does not equal choices[answer_index]"), exc="DataError"),
    Case("jsonl-dataset-missing-file", "`data.jsonl_path` names a missing file (split_data step)",
         step("split_data", "--config", TINY, "--set", "data.easy=jsonl", "--set",
              lambda c: f"data.jsonl_path={c.tmp / 'missing.jsonl'}", "--splits", lambda c: c.tmp / "s",
              "--state", lambda c: c.tmp / "t", isolated=False),
         1, ("data file not found", "missing.jsonl")),
    Case("jsonl-dataset-step-missing-field", "`data.easy: jsonl`, a row without `question` (split_data step)",
         step("split_data", "--config", TINY, "--set", "data.easy=jsonl", "--set",
              lambda c: f"data.jsonl_path={jsonl(c, 'e.jsonl', [row(1), without(row(5), 'question')])}",
              "--splits", lambda c: c.tmp / "s", "--state", lambda c: c.tmp / "t", isolated=False),
         1, ("e.jsonl:2", "row 'q5'", "missing field(s) question")),
    Case("split-empty-after-filter", "every row filtered out (`data.max_choices=2`, rows with 3 options)",
         api(empty_split), None, ("data.easy_train:", "rows needed but only 0 available", "data.easy='jsonl'",
                                  "0 rows read after filtering", "give more rows"), exc="DataError"),
    Case("split-too-few-rows", "`data.easy_train=100000` with the tiny config's ARC-Easy (split_data step)",
         split_step("data.easy_train=100000"), 1,
         ("data.easy_train: 100000 rows needed but only", "data.easy='arc_easy'", "easy rows read after filtering",
          "which need 100020 in all", "lower data.easy_train to at most"), extra=split_counts),
    Case("jsonl-dataset-empty-file", "`data.easy: jsonl` on an empty file (split_data step)",
         split_step("data.easy=jsonl", jsonl_path("empty.jsonl", 0)), 1,
         ("data.easy_train: 24 rows needed but only 0 available", "0 easy rows read after filtering",
          "which need 44 in all")),
    Case("jsonl-dataset-five-rows", "`data.easy: jsonl` and `data.hard: jsonl` on a 5-row file (split_data step)",
         split_step("data.easy=jsonl", "data.hard=jsonl", "data.difficulty=random", jsonl_path("five.jsonl", 5)), 1,
         ("data.easy_train: 24 rows needed but only 0 available", "5 rows read after filtering",
          "2 of them on the easy side", "which need 44 in all")),
    # ---------------------------------------------------------------- models
    Case("model-unknown-step", "`experts.model=nosuchmodel` in a single split_data step",
         step("split_data", "--config", TINY, "--set", "experts.model=nosuchmodel", "--splits",
              lambda c: c.tmp / "s", "--state", lambda c: c.tmp / "t"),
         1, ("unknown model 'nosuchmodel'", "tiny-weak")),
    Case("model-no-weights", "a model folder with config.json but no weights",
         run_set(lambda c: f"experts.model={model_folder(c, 'noweights', {})}"), 1,
         ("experts.model", "noweights", "has no weights")),
    Case("model-corrupt-safetensors", "a truncated model.safetensors (student)",
         run_set(lambda c: f"experts.model={tiny_model_dir()}",
                 lambda c: f"student.model={model_folder(c, 'trunc', {'model.safetensors': truncated(c)})}"),
         1, ("student.model", "corrupt safetensors file", "trunc/model.safetensors")),
    Case("model-pickle-only", "a model folder holding only pytorch_model.bin (a pickle)",
         run_set(lambda c: f"experts.model={model_folder(c, 'pickled', {'pytorch_model.bin': pickle_bytes(c)})}"),
         1, ("experts.model", "only pickled weights", "only safetensors are loaded"), extra=_not_executed),
    Case("model-safetensors-is-pickle", "a model.safetensors that is really a pickle",
         run_set(lambda c: f"experts.model={model_folder(c, 'fake', {'model.safetensors': pickle_bytes(c)})}"),
         1, ("experts.model", "corrupt safetensors file", "fake/model.safetensors"), extra=_not_executed),
    Case("model-pickle-only-loader", "the model loader of every step given a pickle-only folder",
         api(load_model_of(lambda c: model_folder(c, "pickled2", {"pytorch_model.bin": pickle_bytes(c)}))),
         None, ("pickled2", "only pickled weights"), exc="ModelError", extra=_not_executed),
    Case("model-tokenizer-differs", "a weak model whose tokenizer differs from the one the boosting state "
         "was made with (train_expert)",
         train_expert_with(lambda c: str(mixed_tokenizer_model(c)), lambda c: str(c.tmp / "gemma-tok-model")),
         1, ("train_expert-r1", "tokenizer of", "gemma-tok-model", "all experts must share one tokenizer")),
    Case("model-state-for-other-model", "train_expert with `experts.model` other than the state's weak model",
         train_expert_with(lambda c: str(mixed_tokenizer_model(c)), lambda c: "tiny-weak"),
         2, ("train_expert-r1", "experts.model is", "the state was made for 'tiny-weak'")),
    # ---------------------------------------------------------------- training
    Case("training-diverges", "train_expert with a learning rate that diverges (`experts.train.lr=1e30`)",
         train_expert_with(lambda c: "tiny-weak", lambda c: "tiny-weak", "experts.train.lr=1e30"), 1,
         ("expert r1: the training loss is", "at optimizer step", "(learning rate 1e+30)",
          "the model diverged and nothing was saved", "lower the section's train.lr"), extra=nothing_saved),
    # ---------------------------------------------------------------- object storage
    Case("artifact-checksum-mismatch", "an artifact file whose checksum differs from its manifest",
         api(corrupt_artifact), None,
         ("checksum mismatch", "s3://", "/runs/run-c/train_expert-r1/expert/files/sub/b.bin"),
         exc="CorruptArtifactError", s3=True),
    Case("artifact-incomplete", "a manifest listing a file that is not in the bucket",
         api(incomplete_artifact), None,
         ("incomplete artifact", "run run-i", "step update_weights-r1", "files/b.txt"), exc="StorageError", s3=True),
    Case("upstream-missing", "a step run with `--run-id` whose producer's output is not in storage",
         step("train_expert", "--config", TINY, "--set", lambda c: f"storage.bucket={c.store.bucket}",
              "--run-id", "no-such-run", "--round", "1", "--splits", lambda c: c.tmp / "absent-splits",
              "--state", lambda c: c.tmp / "absent-state", "--expert", lambda c: c.tmp / "e", s3=True),
         1, ("missing artifact", "run no-such-run", "step split_data", "output splits",
             "/runs/no-such-run/split_data/splits/"), s3=True),
    Case("report-unknown-run", "`ensemw2s report --run-id` of a run that does not exist",
         cli("report", "--config", TINY, "--set", lambda c: f"storage.bucket={c.store.bucket}",
             "--run-id", "never-ran", s3=True),
         1, ("missing artifact", "run never-ran", "step report"), s3=True),
    Case("s3-unreachable", "an S3 endpoint nobody listens on (`storage.endpoint=http://127.0.0.1:9`)",
         run_set("storage.endpoint=http://127.0.0.1:9", isolated=False, AWS_ACCESS_KEY_ID="x",
                 AWS_SECRET_ACCESS_KEY="y"), 1,
         ("object storage check failed", "endpoint http://127.0.0.1:9", "cannot connect")),
    Case("s3-unreachable-step", "a step with `--run-id` and `S3_ENDPOINT_URL` pointing at a closed port",
         step("update_weights", "--config", TINY, "--run-id", "r", "--round", "1", "--state", lambda c: c.tmp / "s",
              "--expert", lambda c: c.tmp / "e", "--out-state", lambda c: c.tmp / "o",
              S3_ENDPOINT_URL="http://127.0.0.1:9", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y"),
         1, ("object storage check failed", "http://127.0.0.1:9", "cannot connect")),
    Case("s3-wrong-credentials", "a wrong secret key (`ensemw2s report`)",
         cli("report", "--config", TINY, "--run-id", "x", s3=True, AWS_SECRET_ACCESS_KEY="not-the-secret"),
         1, ("object storage check failed", "wrong credentials", "SignatureDoesNotMatch"), s3=True),
    Case("s3-wrong-credentials-api", "a wrong secret key (Store.check)",
         api(wrong_credentials), None, ("object storage check failed", "wrong credentials"),
         exc="StorageError", s3=True),
    Case("s3-missing-bucket", "a bucket that does not exist (`Store.check(create=False)`)",
         api(missing_bucket), None, ("bucket 'ew2s-no-such-bucket-7f3a' does not exist at http://", "(NoSuchBucket)",
                                     "check storage.bucket"), exc="StorageError", s3=True),
    Case("runs-list-typo-bucket", "a typo'd bucket for a read (`ensemw2s runs list --set storage.bucket=...`)",
         cli("runs", "list", "--config", TINY, "--set", "storage.bucket=ew2s-typo-xyz", s3=True), 1,
         ("bucket 'ew2s-typo-xyz' does not exist", "(NoSuchBucket)", "reading never creates a bucket"), s3=True,
         extra=bucket_not_created("ew2s-typo-xyz")),
    Case("runs-show-unknown-run", "`ensemw2s runs show <a run id that is not stored>`",
         cli("runs", "show", "typo", "--config", TINY, "--set", lambda c: f"storage.bucket={c.store.bucket}",
             s3=True), 1, ("no run 'typo'", "s3://", "ensemw2s runs list"), s3=True),
    Case("s3-not-s3-api", "`storage.endpoint` is a plain web server, not S3 (`ensemw2s runs list`)",
         cli_at_web_server("runs", "list", "--config", TINY, "--set", "storage.endpoint=@URL@",
                           AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y"), 1,
         ("object storage check failed", "endpoint http://127.0.0.1:", "does not answer like an S3 API",
          "HTTP 404")),
    Case("s3-not-s3-api-redirect", "`storage.endpoint` is a web server that redirects the bucket's URL",
         cli_at_web_server("runs", "list", "--config", TINY, "--set", "storage.endpoint=@URL@", folders=("ensemw2s",),
                           AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y"), 1,
         ("object storage check failed", "does not answer like an S3 API", "redirects every request")),
    # ---------------------------------------------------------------- cluster
    Case("config-bad-prompt", "unknown prompt form (`data.prompt=letters`)",
         run_set("data.prompt=letters"), 2, ("data.prompt", "'letters'", "allowed values: mc, rc")),
    Case("bench-unknown-setting", "`python -m benchmarks.science settings --settings nope`",
         lambda ctx: _proc(ctx, "benchmarks.science", ["settings", "--settings", "nope", "--config", TINY]), 2,
         ("--settings: unknown setting(s) nope", "allowed values", "arc_easy-sciq", "mmlu-level")),
    Case("bench-ablation-bad-key", "a `--ablations` file with a misspelt key (`grids:`)",
         lambda ctx: _proc(ctx, "benchmarks.science", ["science", "--config", TINY, "--ablations", ctx.write(
             "abl.yaml", f"base: {TINY}\ngrids:\n  boosting.rounds: [1]\n")]), 2,
         ("abl.yaml", "unknown key(s) 'grids'", "allowed keys: base, grid, seeds, parallelism, fork_from")),
    Case("run-fork-missing-source", "`ensemw2s run --from-run <a run id with nothing stored>`",
         cli("run", "--config", TINY, "--from-run", "no-such-run", "--run-id", "fork-x", s3=True, isolated=False), 1,
         ("missing run", "no-such-run", "s3://"), s3=True, no_trace=False),
    Case("schedule-5-field-cron", "`ensemw2s schedule --cron \"0 3 * * *\"` (KFP wants 6 fields)",
         cli("schedule", "--host", "http://127.0.0.1:9", "--cron", "0 3 * * *", "--config", TINY), 2,
         ("0 3 * * *", "6 fields")),
    Case("kfp-not-kfp-api", "`ensemw2s submit --host <a plain web server>`",
         cli_at_web_server("submit", "--host", "@URL@", "--config", TINY), 1,
         ("--host http://127.0.0.1:", "is not a KFP API", "/apis/v2beta1/healthz", "HTTP 404"),
         extra=faster_than(10)),
    Case("kfp-not-kfp-api-schedule", "`ensemw2s schedule --host <a plain web server>`",
         cli_at_web_server("schedule", "--host", "@URL@", "--cron", "0 0 3 * * *", "--config", TINY), 1,
         ("--host http://127.0.0.1:", "is not a KFP API"), extra=faster_than(10)),
    Case("kfp-unreachable", "`ensemw2s submit --host http://127.0.0.1:9` (nothing listens)",
         cli("submit", "--host", "http://127.0.0.1:9", "--config", TINY), 1,
         ("cannot reach the KFP API at http://127.0.0.1:9",), extra=faster_than(10)),
    # ---------------------------------------------------------------- interrupted
    Case("run-ctrl-c", "Ctrl-C (SIGINT to the process group) while `ensemw2s run` is in train_expert-r1",
         ctrl_c_run, 130, (f"error: run {CTRL_C_RUN} interrupted (Ctrl-C)",
                           f"Resume with: ensemw2s run --run-id {CTRL_C_RUN} --config configs/tiny.yaml"),
         s3=True, no_trace=False, extra=ctrl_c_checks, marks=(pytest.mark.timeout(600),)),
]
# fmt: on


def test_catalogue_size():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


def test_catalogue_is_documented(repo_root):
    doc = (repo_root / "docs" / "errors.md").read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in doc]
    assert not missing, f"docs/errors.md lacks {missing}"


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=(*c.marks, *((pytest.mark.s3,) if c.s3 else ()))) for c in CASES]
)
def test_bad_input(case: Case, tmp_path, request):
    s3 = store = None
    if case.s3:
        s3 = request.getfixturevalue("s3_env")
        store = request.getfixturevalue("store")
    ctx = Ctx(tmp_path, s3, store)
    out = case.run(ctx)
    print(f"{case.id} -> exit {out.code} in {out.seconds:.1f} s: {out.message}")  # shown with -s (docs/errors.md) or on failure
    if case.code is None:
        assert out.exc is not None, f"{case.id}: no exception raised"
        names = {k.__name__ for k in type(out.exc).__mro__}
        assert case.exc in names, f"{case.id}: {type(out.exc).__name__}: {out.message}"
    else:
        assert out.code == case.code, (
            f"{case.id}: exit {out.code}, expected {case.code}\n{out.output[-3000:]}"
        )
        assert out.message.startswith("error:"), (
            f"{case.id}: no one-line 'error:' message\n{out.output[-3000:]}"
        )
        assert "Traceback" not in out.output, (
            f"{case.id}: a traceback instead of a message\n{out.output[-3000:]}"
        )
        # "before any compute" is checked by what did not happen (no server, no pipeline), not by a clock
        if case.no_trace and ctx.home.exists():  # isolated home: no embedded server, no pipeline started
            assert not (ctx.home / "s3").exists(), f"{case.id}: the embedded S3 server was started"
            assert not (ctx.home / "kfp-local").exists(), f"{case.id}: the pipeline was started"
    for part in case.expect:
        assert part in out.message, f"{case.id}: {part!r} not in message: {out.message}"
    assert "\n" not in out.message.strip()
    if case.extra:
        case.extra(ctx, out)
