"""The live view of a local run: one line per step (its step key, status, wall time, and for the running step
a progress bar with ETA), while kfp.local's own output and each step's full log go to one log file per step.

How it works:

- **Logs.** :func:`capture` points file descriptors 1 and 2 at ``<logs>/kfp-local.log`` (nothing written to
  them, by this process or a library below it, reaches the terminal) and replaces ``sys.stdout`` /
  ``sys.stderr`` with a :class:`LogRouter` for the duration of the run. kfp.local prints everything it has to
  say through them: its own log lines (``Executing task 'train-expert-2'`` ... ``Task 'train-expert-2' finished
  with status SUCCESS``, the executor input JSON) and every line of the step subprocess. The router cuts that
  stream at the task boundaries and writes each part to ``<logs>/<step key>.log`` (the kfp task name is
  mapped to the step key with the compiled pipeline's display names); what is outside every task goes to
  ``kfp-local.log``. A closed step log is handed to ``on_log_closed`` (the run uploads it next to the step's
  artifacts).
- **Progress.** The steps use tqdm (training, teacher-forced scoring). :func:`tqdm_env` gives the step
  subprocesses a ``TQDM_BAR_FORMAT`` (tqdm reads ``TQDM_*`` variables as its defaults) that turns every bar
  into a line record, ``ensemw2s-progress <n>/<total> elapsed=<s> rate=<it/s> unit=<unit> desc=<desc>``,
  parsed by :func:`parse_progress`: no code in the steps knows about the view.
- **Display.** On a terminal a ``rich`` live table redraws the lines in place; otherwise (CI, a pipe) plain
  lines without control codes: one when a step starts, one when it ends, and for a long step a progress
  line after 1, 2, 4, 8, ... minutes. ``verbose`` shows everything kfp.local prints, as it comes (the logs
  are still written).

Core module: it knows kfp.local's log lines as text only and never imports kfp.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional, TextIO

PROGRESS_TAG = "ensemw2s-progress"
# one record per tqdm refresh; the trailing newline makes it a line of its own in the step's log. desc is
# last, so a bar trimmed to a terminal width loses only the end of its description
BAR_FORMAT = PROGRESS_TAG + " {n}/{total} elapsed={elapsed_s:.1f} rate={rate_noinv} unit={unit} desc={desc}\n"
_PROGRESS_RE = re.compile(PROGRESS_TAG + r" (?P<n>[0-9.]+)/(?P<total>[0-9.]+|None) elapsed=(?P<elapsed>[0-9.]+) "
                          r"rate=(?P<rate>[0-9.eE+-]+|None|inf) unit=(?P<unit>\S*) desc=(?P<desc>.*)$")
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_EXEC_RE = re.compile(r"Executing task '([^']+)'")
_FINISH_RE = re.compile(r"Task '([^']+)' finished with status (\w+)")
_RESTORED_RE = re.compile(r"outputs already complete in .*: restored")
# what a running step says of itself, shown dim beside it when it has no bar: "[<step key>] ..." lines, not
# kfp.local's ("[KFP Executor ...]") nor the executor input JSON
_STEP_SAYS_RE = re.compile(r"\[(?!KFP)[A-Za-z0-9_.-]+\] \S")
STALE_BAR_S = 2.0  # a finished bar is shown this long, then the step's own last line again
LOG_EVERY_S = 10.0  # a bar's records written to the step log at most this often (and its last one)
TAIL_LINES = 25


def tqdm_env(mininterval: float = 1.0) -> dict:
    """Environment for the step subprocesses: every tqdm bar writes :data:`BAR_FORMAT` records, at most one
    per ``mininterval`` seconds."""
    return {"TQDM_BAR_FORMAT": BAR_FORMAT, "TQDM_MININTERVAL": str(mininterval)}


@dataclasses.dataclass
class Progress:
    n: float
    total: Optional[float]
    elapsed: float
    rate: Optional[float]
    unit: str
    desc: str
    seen: float = 0.0  # time.time() when the record arrived

    @property
    def fraction(self) -> Optional[float]:
        return min(1.0, self.n / self.total) if self.total else None

    def eta(self, now: Optional[float] = None) -> Optional[float]:
        """Seconds left, from the bar's own rate, counted down since the record arrived."""
        if not self.total:
            return None
        rate = self.rate or (self.n / self.elapsed if self.elapsed > 0 and self.n > 0 else None)
        if not rate:
            return None
        left = (self.total - self.n) / rate
        return max(0.0, left - max(0.0, (now or time.time()) - self.seen))

    @property
    def label(self) -> str:
        return self.desc.strip() or ("training" if self.unit == "it" else self.unit or "progress")


def parse_progress(line: str) -> Optional[Progress]:
    """The progress record in ``line`` (see :data:`BAR_FORMAT`), or None."""
    m = _PROGRESS_RE.search(line.strip("\r\n "))
    if not m:
        return None

    def num(s: str) -> Optional[float]:
        try:
            v = float(s)
        except ValueError:
            return None
        return v if v == v and v not in (float("inf"), float("-inf")) else None

    return Progress(n=float(m["n"]), total=num(m["total"]), elapsed=float(m["elapsed"]), rate=num(m["rate"]),
                    unit=m["unit"], desc=m["desc"].strip(), seen=time.time())


def strip_ansi(text: str) -> str:
    return _ANSI_RE.sub("", text)


def fmt_seconds(s: Optional[float]) -> str:
    """``12.3 s``, ``4m05s``, ``1h02m``."""
    if s is None:
        return "?"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


@dataclasses.dataclass
class StepState:
    key: str
    status: str = "pending"  # pending | running | done | restored | failed
    start: Optional[float] = None
    end: Optional[float] = None
    progress: Optional[Progress] = None
    log_path: Optional[Path] = None
    last_line: str = ""
    index: int = 0  # 1-based order in which the step started
    spinner: object = None

    def live_progress(self, now: float) -> Optional[Progress]:
        """The bar to show: the last one, unless it finished more than :data:`STALE_BAR_S` ago."""
        p = self.progress
        if p is not None and p.total and p.n >= p.total and now - p.seen > STALE_BAR_S:
            return None
        return p

    def seconds(self, now: Optional[float] = None) -> Optional[float]:
        if self.start is None:
            return None
        return (self.end or now or time.time()) - self.start


class RunView:
    """What the run looks like now: the state of every step, updated from the router's events; renders
    itself for ``rich`` (:meth:`__rich_console__`: one line per step, folded to fit the terminal) or as plain
    lines (:meth:`plain_line`)."""

    def __init__(self, run_id: str, steps: list[str], task_names: dict[str, str]):
        self.run_id = run_id
        self.steps = {k: StepState(k) for k in steps}
        self.task_names = dict(task_names)
        self.t0 = time.time()
        self.lock = threading.RLock()
        self.current: Optional[str] = None
        self.started = 0
        self.listeners: list[Callable[[str, StepState], None]] = []

    # ------------------------------------------------------------------ events
    def key_of(self, task: str) -> str:
        return self.task_names.get(task, task)

    def _emit(self, event: str, st: StepState) -> None:
        for fn in self.listeners:
            fn(event, st)

    def task_started(self, task: str, log_path: Optional[Path] = None) -> StepState:
        with self.lock:
            key = self.key_of(task)
            st = self.steps.setdefault(key, StepState(key))
            self.started += 1
            st.status, st.start, st.end, st.progress, st.index = "running", time.time(), None, None, self.started
            st.log_path = log_path
            self.current = key
        self._emit("start", st)
        return st

    def task_finished(self, task: str, ok: bool) -> StepState:
        with self.lock:
            st = self.steps.setdefault(self.key_of(task), StepState(self.key_of(task)))
            st.end = time.time()
            if not ok:
                st.status = "failed"
            elif st.status != "restored":
                st.status = "done"
            self.current = None
        self._emit("end", st)
        return st

    def step_line(self, key: str, line: str) -> None:
        with self.lock:
            st = self.steps.get(key)
            if st is None:
                return
            p = parse_progress(line)
            if p is not None:
                st.progress = p
                return
            if _RESTORED_RE.search(line) and st.status == "running":
                st.status = "restored"
            text = line.strip()
            if _STEP_SAYS_RE.match(text) and len(text) < 200:
                st.last_line = text

    def running(self) -> list[StepState]:
        with self.lock:
            return [s for s in self.steps.values() if s.status == "running"]

    def failed(self) -> Optional[StepState]:
        with self.lock:
            return next((s for s in self.steps.values() if s.status == "failed"), None)

    # ------------------------------------------------------------------ plain form
    def plain_line(self, event: str, st: StepState, now: Optional[float] = None) -> str:
        now = now or time.time()
        total = len(self.steps)
        head = f"{time.strftime('%H:%M:%S', time.localtime(now))} [{st.index:>2}/{total}] {st.key:<26}"
        if event == "start":
            return f"{head} started"
        if event == "end":
            what = {"done": "done in", "restored": "restored from storage in", "failed": "FAILED after"}
            line = f"{head} {what.get(st.status, st.status)} {fmt_seconds(st.seconds(now))}"
            if st.status == "failed" and st.log_path:
                line += f" (log: {st.log_path})"
            return line
        return f"{head} running {fmt_seconds(st.seconds(now))}" + _progress_text(st.live_progress(now), now,
                                                                                  prefix=": ")

    # ------------------------------------------------------------------ rich form
    def rows(self, max_rows: Optional[int] = None) -> list[tuple[str, Optional[StepState], int]]:
        """What the live table shows: ``(kind, step, count)`` per line, ``kind`` a step's status, or ``"done+"``
        / ``"pending+"`` for ``count`` steps folded into one line when the steps do not fit ``max_rows`` lines
        (finished ones first, then the pending ones at the end; the running step always shows)."""
        steps = list(self.steps.values())
        rows = [(s.status, s, 1) for s in steps]
        if max_rows is None or len(rows) <= max_rows:
            return rows
        finished = [s for s in steps if s.status in ("done", "restored")]
        rows = [("done+", None, len(finished))] + [(s.status, s, 1) for s in steps if s not in finished]
        if len(rows) > max_rows:  # then the pending ones at the end (never a running or failed step)
            pending = [i for i, r in enumerate(rows) if r[0] == "pending"]
            room = max(0, max_rows - 1 - (len(rows) - len(pending)))
            drop = set(pending[room:])
            rows = [r for i, r in enumerate(rows) if i not in drop] + [("pending+", None, len(drop))]
        return rows

    def __rich_console__(self, console, options):
        from rich.progress_bar import ProgressBar
        from rich.spinner import Spinner
        from rich.table import Table
        from rich.text import Text

        now = time.time()
        with self.lock:
            done = sum(s.status in ("done", "restored") for s in self.steps.values())
            table = Table.grid(padding=(0, 1))
            for _ in range(5):
                table.add_column(no_wrap=True)
            height = options.max_height or options.height or console.height
            for kind, st, count in self.rows(max(2, height - 2) if height else None):
                if st is None:
                    icon, style = ("✔", "green") if kind == "done+" else ("·", "dim")
                    what = "steps done" if kind == "done+" else "more steps pending"
                    table.add_row(Text(icon, style=style), Text(f"{count} {what}", style=style), Text(""),
                                  Text(""), Text(""))
                    continue
                t = fmt_seconds(st.seconds(now)) if st.start is not None else ""
                if st.status == "running":
                    if st.spinner is None:
                        st.spinner = Spinner("dots", style="cyan")
                    p = st.live_progress(now)
                    if p is not None and p.total:
                        cell = _bar_and_detail(ProgressBar(total=p.total, completed=min(p.n, p.total), width=24),
                                               Text(_progress_text(p, now).strip()))
                    elif p is not None:
                        cell = Text(_progress_text(p, now).strip())
                    else:
                        cell = Text(st.last_line[:70], style="dim")
                    table.add_row(st.spinner, Text(st.key, style="bold"), Text("running", style="cyan"),
                                  Text(t, justify="right"), cell)
                else:
                    icon, style = {"done": ("✔", "green"), "restored": ("↺", "blue"), "failed": ("✘", "red"),
                                   "pending": ("·", "dim")}.get(st.status, ("?", ""))
                    table.add_row(Text(icon, style=style), Text(st.key, style="" if st.start else "dim"),
                                  Text(st.status, style=style), Text(t, justify="right"), Text(""))
            yield Text(f"run {self.run_id}: {done}/{len(self.steps)} steps, {fmt_seconds(now - self.t0)}",
                       style="bold")
            yield table


def _bar_and_detail(bar, detail):
    from rich.table import Table

    g = Table.grid(padding=(0, 1))
    g.add_column(no_wrap=True)
    g.add_column(no_wrap=True)
    g.add_row(bar, detail)
    return g


def _progress_text(p: Optional[Progress], now: float, prefix: str = " ") -> str:
    if p is None:
        return ""
    n = f"{p.n:.0f}" if float(p.n).is_integer() else f"{p.n:.1f}"
    if p.total:
        total = f"{p.total:.0f}" if float(p.total).is_integer() else f"{p.total:.1f}"
        eta = p.eta(now)
        return (f"{prefix}{p.label} {n}/{total} ({100 * p.fraction:.0f} %)"
                + (f", ETA {fmt_seconds(eta)}" if eta is not None else ""))
    return f"{prefix}{p.label} {n} {p.unit}"


# --------------------------------------------------------------------------- splitting the stream


class LogRouter(io.TextIOBase):
    """A text stream (what ``sys.stdout`` / ``sys.stderr`` become during a run) that cuts kfp.local's output
    at task boundaries into one log file per step, and feeds the view. Thread-safe."""

    def __init__(self, view: RunView, log_dir: Path, *, echo: Optional[TextIO] = None,
                 on_log_closed: Optional[Callable[[StepState], None]] = None):
        super().__init__()
        self.view, self.log_dir, self.echo, self.on_log_closed = view, Path(log_dir), echo, on_log_closed
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.main_log = open(self.log_dir / "kfp-local.log", "a", encoding="utf-8", buffering=1)
        self._buf = ""
        self._lock = threading.RLock()
        self._step: Optional[StepState] = None
        self._fh: Optional[TextIO] = None
        self._last_logged: dict[str, float] = {}
        self.closed_logs: list[StepState] = []

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # some libraries read sys.stdout.encoding
        return "utf-8"

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # faulthandler and friends want a descriptor: fd 1 points at kfp-local.log
        return 1

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            s = str(s)
        with self._lock:
            if self.echo is not None:
                self.echo.write(s)
                self.echo.flush()
            self._buf += s
            while True:
                i = self._buf.find("\n")
                if i < 0:
                    break
                line, self._buf = self._buf[:i], self._buf[i + 1:]
                for part in line.split("\r"):
                    self._line(part)
        return len(s)

    def flush(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.flush()
            if not self.main_log.closed:
                self.main_log.flush()

    def _line(self, raw: str) -> None:
        line = strip_ansi(raw)
        m = _EXEC_RE.search(line)
        if m:
            self._close_step()
            key = self.view.key_of(m.group(1))
            path = self.log_dir / f"{key}.log"
            self._fh = open(path, "w", encoding="utf-8", buffering=1)
            self._step = self.view.task_started(m.group(1), path)
            self._last_logged = {}
        if self._fh is None:
            self.main_log.write(line + "\n")
            return
        text = line[4:] if line.startswith("    ") else line  # kfp.local indents the step's lines by 4
        p = parse_progress(text)
        if p is not None:
            last = self._last_logged.get(p.desc)
            if last is None or time.time() - last >= LOG_EVERY_S or (p.total and p.n >= p.total):
                self._fh.write(text.strip() + "\n")
                self._last_logged[p.desc] = time.time()
        else:
            self._fh.write(text + "\n")
        assert self._step is not None
        self.view.step_line(self._step.key, text)
        m = _FINISH_RE.search(line)
        if m:
            self.view.task_finished(m.group(1), m.group(2).upper() == "SUCCESS")

    def _close_step(self) -> None:
        if self._fh is None:
            return
        self._fh.close()
        st, self._fh, self._step = self._step, None, None
        if st is not None:
            self.closed_logs.append(st)
            if self.on_log_closed is not None:
                self.on_log_closed(st)

    def close(self) -> None:
        with self._lock:
            if self._buf:
                for part in self._buf.split("\r"):
                    self._line(part)
                self._buf = ""
            self._close_step()
            self.main_log.close()
        super().close()


def tail(path: Path, n: int = TAIL_LINES) -> list[str]:
    """The last ``n`` lines of a log, without progress records, blank lines and kfp.local's rules."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    keep = [ln for ln in lines if ln.strip() and set(ln.strip()) != {"-"} and parse_progress(ln) is None]
    return keep[-n:]


# --------------------------------------------------------------------------- the display


class _PlainPrinter:
    """Plain lines on a stream that is not a terminal: start, end, and a progress line after 1, 2, 4, ...
    minutes of a long step."""

    def __init__(self, view: RunView, out: TextIO, first_heartbeat: float = 60.0):
        self.view, self.out, self.first = view, out, first_heartbeat
        self._next: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="ensemw2s-plain-view", daemon=True)

    def start(self) -> None:
        self.view.listeners.append(self.event)
        self._thread.start()

    def event(self, event: str, st: StepState) -> None:
        if event == "start":
            self._next[st.key] = self.first
        self._print(self.view.plain_line(event, st))

    def _print(self, line: str) -> None:
        with self.view.lock:
            self.out.write(line + "\n")
            self.out.flush()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self.view.lock:
                key = self.view.current
                st = self.view.steps.get(key) if key else None
                if st is None or st.status != "running" or st.start is None:
                    continue
                age = time.time() - st.start
                due = self._next.get(key, self.first)
                if age >= due:
                    self._next[key] = due * 2
                    self._print(self.view.plain_line("tick", st))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def capture(view: RunView, log_dir: Path, *, verbose: bool = False, terminal: Optional[bool] = None,
            on_log_closed: Optional[Callable[[StepState], None]] = None, refresh_per_second: float = 4.0,
            first_heartbeat: float = 60.0):
    """Run the body with fds 1/2 and ``sys.stdout``/``sys.stderr`` routed into the logs under ``log_dir``;
    show ``view`` on the real stdout meanwhile (a live table on a terminal, plain lines otherwise, everything
    as it comes with ``verbose``). ``terminal`` overrides the isatty check. Yields the router."""
    sys.stdout.flush()
    sys.stderr.flush()
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    is_tty = os.isatty(1) if terminal is None else terminal
    term_fd = os.dup(1)
    err_fd = os.dup(2)
    term = open(term_fd, "w", encoding="utf-8", errors="replace", buffering=1, closefd=True)
    sink = os.open(log_dir / "kfp-local.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    old_out, old_err = sys.stdout, sys.stderr
    router = LogRouter(view, log_dir, echo=term if verbose else None, on_log_closed=on_log_closed)
    live = printer = None
    try:
        os.dup2(sink, 1)
        os.dup2(sink, 2)
        sys.stdout = sys.stderr = router
        if not verbose:
            if is_tty:
                from rich.console import Console
                from rich.live import Live

                console = Console(file=term, force_terminal=True, soft_wrap=False)
                live = Live(view, console=console, refresh_per_second=refresh_per_second, transient=False,
                            redirect_stdout=False, redirect_stderr=False)
                live.start()
            else:
                printer = _PlainPrinter(view, term, first_heartbeat)
                printer.start()
        yield router
    finally:
        try:
            router.close()
        finally:
            if live is not None:
                live.refresh()
                live.stop()
            if printer is not None:
                printer.stop()
            sys.stdout, sys.stderr = old_out, old_err
            os.dup2(term_fd, 1)
            os.dup2(err_fd, 2)
            os.close(err_fd)
            os.close(sink)
            term.flush()
            term.close()
