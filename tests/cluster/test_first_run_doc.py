"""docs/cluster.md starts with "First run on a real cluster"; its bash blocks run here, as written, in one
`bash -e` session against the fake KFP API server, with ``http://localhost:8888`` (the port-forwarded API in the
doc) pointed at the fake server.

What runs for real: ``curl`` (the healthz the doc tells you to read), ``ensemw2s submit``, ``kfp run get``,
``kfp recurring-run list``. Stand-ins on PATH, for what needs a cluster, a Docker engine or the helm binary:
``helm`` (tests/cluster/chartrun.py: renders the chart with helm-python-sdk from the same ``--set`` /
``--set-file`` values, then runs the hook Job's or the CronJob's ``ensemw2s`` command, environment, ConfigMap
and Secret resolved as Kubernetes would, against the fake server), ``kubectl`` (records the call; the Secret
it creates is the one the chart's pods resolve), ``make`` (the image build: tests/cluster/test_image_context.py).
``ensemw2s rerun-step`` needs the cluster's object store: here it is parsed by the real CLI and its step name
checked against the step table; tests/cluster/test_rerun.py runs it on a real tiny run in a real S3 server.
The one line this test adds: after step 3 it sets ``KFP_RUN_ID`` to the id ``submit`` printed, as a reader
copies it.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("helm_python", reason="helm-python-sdk is in the [dev] extra")

sys.path.insert(0, str(Path(__file__).parent))
from fake_kfp import FakeKFP  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "cluster.md"
BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent

PREAMBLE = f"""
set -euo pipefail
ensemw2s() {{
  if [ "$1" = rerun-step ]; then
    "{sys.executable}" - "$@" <<'PY'
import sys
from ensemw2s import cli
from ensemw2s.config import load_config
from ensemw2s.steps import keys
args = cli.build_parser().parse_args(sys.argv[1:])
cfg = load_config(args.config or "configs/default.yaml", args.overrides)
assert args.step in keys.run_steps(cfg.boosting.rounds), args.step
print(f"[rerun-step checked, not run: needs the cluster's object store] step {{args.step}} of {{args.run_id}}")
PY
  else
    command ensemw2s "$@"
  fi
}}
"""


def first_run_section() -> str:
    text = DOC.read_text(encoding="utf-8")
    assert text.startswith("# First run on a real cluster\n"), "docs/cluster.md must start with the first run"
    lines, fenced = [], False
    for line in text.splitlines()[1:]:
        fenced ^= line.startswith("```")
        if line.startswith("# ") and not fenced:  # the next top-level heading ends the section
            break
        lines.append(line)
    return "\n".join(lines) + "\n"


def _stand_ins(bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True)
    for tool in ("helm", "kubectl"):
        (bin_dir / tool).write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "chartrun.py"}" {tool} "$@"\n')
    (bin_dir / "make").write_text('#!/bin/sh\necho "[make stand-in: needs a Docker engine] make $*"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)


def test_first_run_commands_work_against_the_fake_server(tmp_path):
    blocks = re.findall(r"```bash\n(.*?)```", first_run_section(), re.S)
    assert len(blocks) >= 6
    assert all("http://localhost:8888" in b for b in blocks[:1])
    submit_block = next(i for i, b in enumerate(blocks) if "ensemw2s submit" in b)
    work, state = tmp_path / "work", tmp_path / "state"
    work.mkdir()
    for name in ("configs", "charts"):
        (work / name).symlink_to(REPO / name)
    _stand_ins(tmp_path / "bin")
    with FakeKFP() as fake:
        parts = [PREAMBLE]
        for i, block in enumerate(blocks):
            parts.append(block.replace("http://localhost:8888", fake.url))
            if i == submit_block:  # the reader copies the KFP run id submit printed
                parts.append(f'export KFP_RUN_ID="$("{sys.executable}" -c \'import json,sys,urllib.request;'
                             f'print(json.load(urllib.request.urlopen(sys.argv[1]))["runs"][-1]["run_id"])\' '
                             f'"{fake.url}/apis/v2beta1/runs")"')
        env = {"PATH": f"{tmp_path / 'bin'}:{BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path / "home"),
               "LANG": "C.UTF-8", "CHARTRUN_STATE": str(state), "CHARTRUN_KFP_HOST": fake.url}
        if os.environ.get("ENSEMW2S_HOME"):
            env["ENSEMW2S_HOME"] = os.environ["ENSEMW2S_HOME"]
        proc = subprocess.run(["bash", "-c", "\n".join(parts)], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-6000:]

        # the healthz read in the prerequisites shows the version
        assert '"tag_name": "2.15.0"' in proc.stdout
        # 2: the Secret, as created
        secrets = json.loads((state / "secrets.json").read_text())
        assert sorted(secrets["ensemw2s-s3"]) == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_ENDPOINT_URL"]
        # 3: one run, with the run id of the doc, the images of the doc and a UI link from the UI's address
        (run,) = [r for r in fake.state.runs.values() if r["runtime_config"]["parameters"].get("run_id")
                  == "first-run-1"]
        assert f"KFP UI: http://localhost:8080/#/runs/details/{run['run_id']}" in proc.stdout
        spec = json.dumps(run["pipeline_spec"])
        assert "registry.example.org/ml/ensemw2s:0.1.0-cpu" in spec
        assert "registry.example.org/ml/ensemw2s:0.1.0-cuda" in spec
        # 4: kfp run get found it
        assert run["run_id"] in proc.stdout and "PENDING" in proc.stdout
        # 5: rerun-step checked
        assert "[rerun-step checked, not run" in proc.stdout
        # 6 and 7: helm install made one recurring run (listed), helm uninstall deleted it
        (created,) = fake.calls("POST", r"/apis/v2beta1/recurringruns")
        assert created.json["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *"
        assert created.json["display_name"] == "ensemw2s-nightly-ablations"
        assert len(fake.calls("DELETE", r"/apis/v2beta1/recurringruns/.*")) == 1
        assert fake.state.recurring_runs == {}
        assert proc.stdout.count("ensemw2s-nightly-ablations") >= 1
