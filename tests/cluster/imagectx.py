"""What `docker build` would do with a Dockerfile, done without a Docker engine: read the instructions, assemble
the build context the way `.dockerignore` filters it, lay out the files each ``COPY`` puts in the image, and run
the builder's ``pip install`` lines into a fresh virtual environment standing in for ``/opt/venv``.

Used by tests/cluster/test_image_context.py (and :func:`parse` by tests/cluster/test_dockerfiles.py).

Third-party dependencies. A Docker build downloads torch and ~100 wheels; this machine cannot (no torch index,
CI should not spend minutes on it), and pip's cache holds none of them. So the fresh environment sees the
project's own environment's *third-party* packages through an "overlay": a folder of symlinks to every entry of
the project venv's site-packages *except* the project itself (``ensemw2s*``, the editable-install hooks
``__editable__*``, ``components``, ``pipelines``) and every ``.pth`` file, listed in one ``.pth`` line of the
new venv. A ``.pth`` line only appends a folder to ``sys.path``; it does not run that folder's own ``.pth``
files, so the editable hook that maps ``ensemw2s``/``components``/``pipelines`` onto the repository is never
installed: the only copy of the project the new interpreter can import is the one built from the assembled
context. The ``pip install`` lines run as written plus ``--no-index --no-build-isolation`` (nothing is
downloaded; setuptools comes from the overlay): pip still resolves every dependency of the built package
against the overlay and the constraints file, so a missing or mis-pinned dependency fails too.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# site-packages entries that belong to this project (never taken from the project's environment)
PROJECT_ENTRIES = re.compile(r"^(ensemw2s([-_.].*)?|__editable__.*|components|pipelines|.*\.pth)$", re.I)


# ------------------------------------------------------------------------------------------ Dockerfile


def parse(path: Path) -> list[tuple[str, str]]:
    """Dockerfile -> [(INSTRUCTION, arguments)], continuation lines joined, comments dropped."""
    instructions, buf = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        keyword, _, rest = (buf + line).partition(" ")
        instructions.append((keyword.upper(), " ".join(rest.split())))
        buf = ""
    assert not buf, f"{path}: dangling line continuation"
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The instructions split at each FROM (each list starts with its FROM); ARGs before the first FROM are
    dropped (none are used here)."""
    out: list[list[tuple[str, str]]] = []
    for keyword, args in instructions:
        if keyword == "FROM":
            out.append([])
        if out:
            out[-1].append((keyword, args))
    return out


def arg_defaults(stage: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for keyword, args in stage:
        if keyword == "ARG":
            name, _, default = args.partition("=")
            out[name] = default
    return out


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for token in shlex.split(args):
                key, sep, value = token.partition("=")
                assert sep, f"ENV {args!r}: use the KEY=VALUE form"
                env[key] = value
    return env


# ------------------------------------------------------------------------------------------ .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go filepath.Match per path element, plus ``**`` for any number of elements)
    as a regex on a slash-separated relative path."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):  # "**/" : zero or more leading elements
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = pattern.index("]", i)
            out += "[" + pattern[i + 1:j].replace("!", "^", 1) + "]"
            i = j
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


@dataclass
class DockerIgnore:
    rules: list[tuple[bool, re.Pattern, str]] = field(default_factory=list)  # (exclude?, regex, text)

    @classmethod
    def read(cls, path: Path) -> DockerIgnore:
        rules = []
        if path.is_file():
            for raw in path.read_text(encoding="utf-8").splitlines():
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                exclude = not line.startswith("!")
                text = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
                rules.append((exclude, _pattern_regex(text), text))
        return cls(rules)

    def excluded(self, rel: str) -> bool:
        """Docker's rule: the last pattern that matches the path or one of its parent folders decides."""
        parts = rel.split("/")
        candidates = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
        verdict = False
        for exclude, rx, _ in self.rules:
            if any(rx.match(c) for c in candidates):
                verdict = exclude
        return verdict

    @property
    def has_exceptions(self) -> bool:
        return any(not exclude for exclude, _, _ in self.rules)


def build_context(repo: Path, dest: Path) -> list[str]:
    """Copy what `docker build <repo>` would send (the working tree, filtered by .dockerignore) to ``dest``;
    returns the relative paths copied."""
    ignore = DockerIgnore.read(repo / ".dockerignore")
    copied = []
    for dirpath, dirnames, filenames in os.walk(repo):
        rel_dir = Path(dirpath).relative_to(repo).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        if not ignore.has_exceptions:  # an excluded folder cannot contain anything re-included: skip it
            dirnames[:] = [d for d in dirnames if not ignore.excluded(f"{rel_dir}/{d}".lstrip("/"))]
        for name in filenames:
            rel = f"{rel_dir}/{name}".lstrip("/")
            src = Path(dirpath) / name
            if ignore.excluded(rel) or not src.is_file():
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
            copied.append(rel)
    return copied


# ------------------------------------------------------------------------------------------ the image


def overlay_of_third_party_packages(dest: Path) -> Path:
    """A folder of symlinks to every third-party entry of this interpreter's site-packages (see the module
    docstring); the project's own entries and every .pth file are left out."""
    site = Path(sysconfig.get_paths()["purelib"])
    dest.mkdir(parents=True, exist_ok=True)
    for entry in site.iterdir():
        if PROJECT_ENTRIES.match(entry.name) or entry.name == "__pycache__":
            continue
        (dest / entry.name).symlink_to(entry)
    return dest


@dataclass
class Image:
    """A Dockerfile's image laid out under ``root`` (``root/opt/venv``, ``root/app``, ...)."""

    dockerfile: Path
    root: Path
    venv: Path | None = None
    env: dict = field(default_factory=dict)
    workdir: Path | None = None
    log: list[str] = field(default_factory=list)

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    @property
    def python(self) -> Path:
        assert self.venv is not None, f"{self.dockerfile.name}: the builder creates no virtual environment"
        return self.venv / "bin" / "python"

    def run_env(self, **extra: str) -> dict[str, str]:
        """The final stage's ENV with its absolute paths mapped under ``root``, on a minimal base environment
        (nothing of the test process's PATH, PYTHONPATH or VIRTUAL_ENV leaks in)."""
        env = {"HOME": str(self.root / "home" / "app"), "LANG": "C.UTF-8", "TMPDIR": str(self.root / "tmp")}
        for key, value in self.env.items():
            if key == "PATH":
                value = ":".join(str(self.path(p)) if p.startswith("/") and self.path(p).exists() else p
                                 for p in value.replace("$PATH", "/usr/local/bin:/usr/bin:/bin").split(":"))
            elif key == "PYTHONPATH":
                value = ":".join(str(self.path(p)) for p in value.split(":") if p)
            env[key] = value
        env.update(extra)
        for d in (env["HOME"], env["TMPDIR"]):
            Path(d).mkdir(parents=True, exist_ok=True)
        return env


def _copy(context: Path, sources: list[str], dest: str, target: Path) -> None:
    """Docker's COPY: a folder's *contents* go into the destination folder; a file goes to ``dest`` itself,
    or into it when ``dest`` ends with "/" (required with several sources)."""
    into = dest.endswith("/") or len(sources) > 1
    for source in sources:
        src = context / source.rstrip("/")
        if not src.exists():
            raise FileNotFoundError(f"COPY {source}: not in the build context (missing from the repository, "
                                    "or excluded by .dockerignore)")
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True)
        else:
            out = target / src.name if into else target
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out)


def build(dockerfile: Path, root: Path, overlay: Path, *, context: Path | None = None,
          timeout: int = 600) -> Image:
    """Lay out ``dockerfile``'s image under ``root``: every stage's WORKDIR/COPY (``COPY --from=<stage>`` copies
    the already laid-out path, which is the same path here), the builder's ``python -m venv`` (a fresh
    environment, with the overlay for third-party packages) and its ``pip install`` lines (with
    ``--no-index --no-build-isolation``). Other RUN lines (apt-get, useradd) are system setup and are skipped.
    Raises ``subprocess.CalledProcessError`` (output attached) when an install fails."""
    context = context or (root.parent / f"{root.name}-context")
    if not context.exists():
        build_context(REPO, context)
    image = Image(dockerfile, root)
    all_stages = stages(parse(dockerfile))
    for stage in all_stages:
        args = arg_defaults(stage)
        workdir = Path("/")
        for keyword, rest in stage:
            if keyword == "WORKDIR":
                workdir = workdir / rest
                image.path(str(workdir)).mkdir(parents=True, exist_ok=True)
            elif keyword == "COPY":
                parts = shlex.split(rest)
                flags = [p for p in parts if p.startswith("--")]
                *sources, dest = [p for p in parts if not p.startswith("--")]
                target = image.path(dest if dest.startswith("/") else str(workdir / dest))
                if any(f.startswith("--from=") for f in flags):
                    for source in sources:  # the same path in the single laid-out tree
                        assert image.path(source).exists(), f"COPY {rest}: {source} was not built"
                    continue
                _copy(context, sources, dest, target)
            elif keyword == "RUN":
                venv = re.search(r"-m venv (\S+)", rest)
                if venv:
                    image.venv = image.path(venv.group(1))
                    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(image.venv)], check=True,
                                   timeout=timeout)
                    site = next((image.venv / "lib").glob("python*/site-packages"))
                    (site / "_ensemw2s_test_third_party.pth").write_text(f"{overlay}\n", encoding="utf-8")
                    image.log.append(f"venv {image.venv}")
                elif "pip install" in rest:
                    assert image.venv is not None, f"RUN {rest}: pip install before any venv"
                    command = rest.replace(
                        "pip install", f'"{image.python}" -m pip install --no-index --no-build-isolation '
                                       "--disable-pip-version-check", 1)
                    env = {"PATH": f"{image.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
                           "HOME": str(root / "home" / "builder"), "LANG": "C.UTF-8", **args}
                    proc = subprocess.run(["sh", "-ec", command], cwd=image.path(str(workdir)), env=env,
                                          capture_output=True, text=True, timeout=timeout)
                    image.log.append(f"$ {command}\n{proc.stdout}{proc.stderr}")
                    if proc.returncode:
                        raise subprocess.CalledProcessError(proc.returncode, command, proc.stdout, proc.stderr)
                else:
                    image.log.append(f"skipped (system setup): RUN {rest[:80]}")
        image.workdir = image.path(str(workdir))
    image.env = env_of(all_stages[-1])
    return image
