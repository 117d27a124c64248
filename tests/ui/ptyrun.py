"""Run a command with a pseudo-terminal as its stdin/stdout/stderr, as a person's terminal would be."""
import os
import pty
import select
import subprocess
import time


def run_in_pty(cmd, *, env=None, cwd=None, timeout=120, rows=40, cols=140) -> str:
    """Run ``cmd`` in a ``rows`` x ``cols`` pseudo-terminal; return everything it wrote (it must exit 0)."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {**(env or os.environ), "TERM": "xterm-256color", "COLUMNS": str(cols), "LINES": str(rows)}
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, close_fds=True,
                            start_new_session=True)
    os.close(slave)
    out, deadline = bytearray(), time.time() + timeout
    try:
        while time.time() < deadline:
            r, _, _ = select.select([master], [], [], 0.5)
            if r:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                out += data
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    text = out.decode("utf-8", errors="replace")
    assert proc.returncode == 0, f"exit {proc.returncode}:\n" + text[-3000:]
    return text
