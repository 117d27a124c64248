"""The images, built as far as this machine allows without a Docker engine, then used as a cluster uses them.

For each Dockerfile: the build context is assembled exactly as ``docker build .`` sends it (the working tree
filtered by ``.dockerignore``), every ``COPY`` of every stage lays its files out under a scratch root
(``root/src``, ``root/app``, ...), the builder's ``python -m venv /opt/venv`` becomes a fresh virtual
environment at ``root/opt/venv`` and its ``pip install`` lines run there as written (``-c constraints``, the
package built from the copied sources). Then that environment's interpreter does what the cluster does with
the image:

- one real pipeline step, ``split_data`` on the tiny test models, through the compiled component's own
  command (``sh -ec ... python3 -m kfp.dsl.executor_main``) with an executor input like KFP's launcher writes;
- ``ensemw2s compile``, which the Helm chart's pod runs inside ``submit``/``schedule`` (it imports
  ``pipelines`` and ``components``, and reads ``/app/configs``).

A file the image lacks (a package directory not copied before ``pip install .``, a module missing from a
package, a config not copied to ``/app``) fails one of these. Why third-party packages are not downloaded,
and why that cannot hide a missing project file: see the docstring of ``tests/cluster/imagectx.py``
(a fresh venv whose only view of the project is what was built from the context; dependencies come from an
overlay of the project environment's *third-party* site-packages, installed with ``--no-index``).

What this cannot check: the base images themselves (Python 3.12 from Ubuntu in the CUDA image; this runs
the test interpreter's Python), apt-get, the CUDA torch wheel, the non-root user. Those need a Docker engine
(``make image``).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import imagectx  # noqa: E402

REPO = imagectx.REPO
DOCKERFILES = {"cpu": REPO / "docker" / "Dockerfile.cpu", "cuda": REPO / "docker" / "Dockerfile.cuda"}


@pytest.fixture(scope="module")
def overlay(tmp_path_factory) -> Path:
    return imagectx.overlay_of_third_party_packages(tmp_path_factory.mktemp("overlay") / "site")


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("context") / "ctx"
    copied = imagectx.build_context(REPO, dest)
    assert "pyproject.toml" in copied and not any(p.startswith((".venv/", ".git/", "tests/")) for p in copied)
    return dest


@pytest.fixture(scope="module")
def images(tmp_path_factory, overlay, context) -> dict[str, imagectx.Image]:
    built = {}
    for flavour, dockerfile in DOCKERFILES.items():
        root = tmp_path_factory.mktemp(f"image-{flavour}")
        try:
            built[flavour] = imagectx.build(dockerfile, root, overlay, context=context)
        except subprocess.CalledProcessError as exc:
            pytest.fail(f"{dockerfile.name}: `{exc.cmd}` failed (exit {exc.returncode}):\n"
                        f"{(exc.stdout or '')[-3000:]}{(exc.stderr or '')[-3000:]}")
    return built


@pytest.fixture(params=sorted(DOCKERFILES))
def image(request, images) -> imagectx.Image:
    return images[request.param]


def test_the_image_holds_the_project_built_from_the_context_only(image):
    """The packages the image imports are the ones installed into /opt/venv, not the repository's."""
    code = ("import ensemw2s, components, pipelines, kfp; "
            "print(ensemw2s.__file__); print(components.__file__); print(pipelines.__file__)")
    proc = subprocess.run([str(image.python), "-c", code], cwd=image.workdir, env=image.run_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in proc.stdout.split():
        assert Path(line).is_relative_to(image.venv), f"{line} is not inside the image's /opt/venv"
        assert not Path(line).is_relative_to(REPO)


def _executor_input(spec: dict, task: str, out: Path) -> dict:
    """An ExecutorInput for a root-DAG task of a compiled pipeline, as KFP's launcher would write it: constants
    from the spec, pipeline parameters at their defaults (run_id empty: no object storage), one local folder
    per output artifact."""
    root_inputs = spec["root"]["inputDefinitions"]["parameters"]
    params = {}
    for name, value in spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"].items():
        if "runtimeValue" in value:
            params[name] = value["runtimeValue"]["constant"]
        else:
            definition = root_inputs[value["componentInputParameter"]]
            default = definition.get("defaultValue", "")
            params[name] = int(default) if definition["parameterType"] == "NUMBER_INTEGER" else default
    component = spec["components"][spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]]
    artifacts = {}
    for name, definition in component["outputDefinitions"]["artifacts"].items():
        artifacts[name] = {"artifacts": [{"name": name, "type": definition["artifactType"],
                                          "uri": str(out / name), "metadata": {}}]}
    return {"inputs": {"parameterValues": params},
            "outputs": {"artifacts": artifacts, "outputFile": str(out / "executor_output.json")}}


def test_a_real_component_runs_in_the_image(image, tiny_assets, tmp_path):
    from pipelines.ensemw2s import compile_pipeline

    from ensemw2s.config import load_config

    spec = yaml.safe_load(compile_pipeline(load_config(REPO / "configs/tiny.yaml"), tmp_path / "p.yaml",
                                           for_cluster=False).read_text())
    container = spec["deploymentSpec"]["executors"]["exec-split-data"]["container"]
    out = tmp_path / "outputs"
    executor_input = json.dumps(_executor_input(spec, "split-data", out))
    argv = container["command"] + [executor_input if a == "{{$}}" else a for a in container["args"]]
    assert argv[:2] == ["sh", "-ec"] and "python3 -m kfp.dsl.executor_main" in argv[2]
    # the image carries no models: on a cluster they are baked into a derived image or fetched from S3
    env = image.run_env(ENSEMW2S_HOME=str(tiny_assets), HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(argv, cwd=image.workdir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{image.dockerfile.name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    splits = out / "splits"
    expected = {f"{s}.jsonl" for s in ("easy_train", "easy_val", "easy_test", "hard_pool", "hard_test")}
    assert expected | {"split.json"} <= {p.name for p in splits.iterdir()}
    assert sum(1 for _ in (splits / "easy_train.jsonl").open()) == 24  # configs/tiny.yaml: easy_train: 24
    assert (out / "state" / "weights.jsonl").stat().st_size > 0
    assert (out / "executor_output.json").is_file()


def test_the_chart_pods_command_compiles_in_the_image(image, tmp_path):
    """The Helm chart's pod runs `ensemw2s submit|schedule`, which compiles the pipeline in the image: the
    console script, pipelines/, components/ and /app/configs must all be there."""
    ensemw2s = image.venv / "bin" / "ensemw2s"
    assert ensemw2s.is_file(), "the console script is not in /opt/venv/bin"
    out = tmp_path / "pipeline.yaml"
    proc = subprocess.run([str(ensemw2s), "compile", "--config", "configs/tiny.yaml", "-o", str(out)],
                          cwd=image.workdir, env=image.run_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train_expert-r2" in out.read_text()


def test_a_package_directory_left_out_of_the_build_fails_here(tmp_path, overlay, context):
    """The check above can fail: the Dockerfile as it was before issue 13 (the package installed before
    components/ and pipelines/ were copied) does not build."""
    text = DOCKERFILES["cpu"].read_text(encoding="utf-8")
    broken = "\n".join(line for line in text.splitlines()
                       if line.strip() not in ("COPY components/ components/", "COPY pipelines/ pipelines/"))
    assert broken != text
    dockerfile = tmp_path / "Dockerfile.broken"
    dockerfile.write_text(broken, encoding="utf-8")
    with pytest.raises(subprocess.CalledProcessError) as failed:
        imagectx.build(dockerfile, tmp_path / "root", overlay, context=context)
    assert "package directory 'components' does not exist" in failed.value.stdout + failed.value.stderr
