"""The results pages as a person sees them: opened in headless Chromium (Debian's ``chromium``), every image
decoded, the tables there with their numbers, and a screenshot whose image areas show the plots.

The pages are those of ``ensemw2s runs page`` (the index across runs and a run's page) and the report step's
``report.html`` (the KFP UI's HTML artifact), on the stored runs of tests/ui/conftest.py. Chromium runs twice per
page: ``--dump-dom`` on a copy with a probe script appended (each ``<img>``'s ``complete``/``naturalWidth`` and
position, each table's rows, after the load event), then ``--screenshot`` of the same copy; each image's area of
the screenshot must hold the plot's own colours (a broken image is a grey icon and its alt text).
"""
import json
import os
import re
import shutil
import subprocess

import pytest

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
NO_BROWSER = ("headless Chromium is not installed here, so the page cannot be opened in a browser (Debian: "
              "apt-get install -y --no-install-recommends chromium; .ci/run installs it)")
pytestmark = pytest.mark.s3


@pytest.fixture(scope="module", autouse=True)
def _browser():
    """Skip without Chromium, with the reason; fail instead where it is required (.ci/run sets
    ENSEMW2S_REQUIRE_BROWSER=1: in CI this test must run)."""
    if CHROMIUM is None:
        if os.environ.get("ENSEMW2S_REQUIRE_BROWSER") == "1":
            pytest.fail(NO_BROWSER + "; ENSEMW2S_REQUIRE_BROWSER=1 requires it")
        pytest.skip(NO_BROWSER)

WIDTH = 1280
PROBE = """<script>
window.addEventListener('load', () => {
  const r = e => { const b = e.getBoundingClientRect(); return [b.left, b.top + window.scrollY, b.width, b.height]; };
  const out = {
    images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth,
                                            h: i.naturalHeight, rect: r(i)})),
    tables: [...document.querySelectorAll('table')].map(t => ({cls: t.className, rows: t.rows.length,
                                                                 first: t.rows.length > 1 ? t.rows[1].innerText : ''})),
    height: document.documentElement.scrollHeight,
  };
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""
# matplotlib's tab: colours the plots draw with (lines, markers, bars)
# the run page's images (by round: line + markers, dashed single expert; labels: one bar per source; step times:
# computed (blue) and restored (grey) bars)
RUN_IMAGES = [("ensemble accuracy by round", {"blue": 0.002, "red": 0.0005}),
              ("pseudo-label accuracy", {"blue": 0.01, "red": 0.01, "green": 0.01}),
              ("per-step times", {"blue": 0.01, "gray": 0.005})]
TAB = {"blue": (31, 119, 180), "red": (214, 39, 40), "green": (44, 160, 44), "gray": (127, 127, 127),
       "orange": (255, 127, 14), "purple": (148, 103, 189)}


def _chromium(*args, timeout=120) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
           "--no-first-run", "--disable-dev-shm-usage", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def open_in_browser(page, tmp_path):
    """``(probe, screenshot)`` of ``page`` in headless Chromium."""
    from PIL import Image

    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _chromium("--virtual-time-budget=10000", f"--window-size={WIDTH},1000", "--dump-dom",
                    probed.as_uri()).stdout
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, "the probe did not run: the page did not load in Chromium\n" + dom[-2000:]
    probe = json.loads(m.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    shot = tmp_path / f"{page.stem}.png"
    _chromium("--virtual-time-budget=10000", f"--window-size={WIDTH},{int(probe['height']) + 50}",
              f"--screenshot={shot}", probed.as_uri())
    return probe, Image.open(shot).convert("RGB")


def _colour_share(img, rect, rgb, tol=40) -> float:
    import numpy as np

    x, y, w, h = (int(round(v)) for v in rect)
    a = np.asarray(img.crop((x, y, x + w, y + h))).astype(int)
    near = (np.abs(a - np.array(rgb)).max(axis=-1) <= tol)
    return float(near.mean()) if near.size else 0.0


def check_images(probe, shot, expected: list[tuple[str, tuple]]):
    """Every image decoded (naturalWidth > 0) and its screenshot area showing the plot's colours; ``expected``:
    ``(alt, {colour: least share of the image's area})`` per image, in page order (thin lines are a small share:
    the browser scales the PNG, so a colour counts within a tolerance)."""
    import numpy as np

    imgs = probe["images"]
    assert [i["alt"] for i in imgs] == [alt for alt, _ in expected], imgs
    for i, (alt, colours) in zip(imgs, expected):
        assert i["complete"] and i["w"] > 300 and i["h"] > 150, f"image {alt!r} did not decode: {i}"
        x, y, w, h = i["rect"]
        assert w > 300 and h > 150 and y + h <= shot.height + 1, f"image {alt!r} not laid out: {i['rect']}"
        crop = np.asarray(shot.crop((int(x), int(y), int(x + w), int(y + h))))
        assert len(np.unique(crop.reshape(-1, 3), axis=0)) > 50, f"image {alt!r} is blank in the screenshot"
        for c, least in colours.items():
            share = _colour_share(shot, i["rect"], TAB[c])
            assert share >= least, f"image {alt!r}: {c} covers {share:.4%} of its area in the screenshot"


@pytest.fixture(scope="module")
def site_dir(stored_runs, tmp_path_factory):
    """``ensemw2s runs page`` of the stored runs (two seeds, a results-page run, an ablation)."""
    from ensemw2s.cli import main

    store, runs, abl = stored_runs
    out = tmp_path_factory.mktemp("site")
    ids = ["20261201-101500-aaaaaa", "20261201-111500-bbbbbb", "sci-t-s0-cccccc", abl["base"]]
    assert main(["runs", "page", *ids, "-o", str(out), "--no-upload", "--set", f"storage.bucket={store.bucket}"]) == 0
    return out


def test_run_page_renders_table_and_plots(stored_runs, site_dir, tmp_path):
    store, runs, _ = stored_runs
    rid = "20261201-101500-aaaaaa"
    page = site_dir / f"run-{rid}.html"
    probe, shot = open_in_browser(page, tmp_path)
    check_images(probe, shot, RUN_IMAGES)
    tables = {t["cls"]: t for t in probe["tables"]}
    assert tables["results"]["rows"] == 1 + 6  # header + the six models
    m = runs[rid]["metrics"]
    first = tables["results"]["first"].split("\t")
    from ensemw2s.evaluation import acc_with_interval

    assert first[0] == "weak single expert (the baseline)", first
    assert first[2] == acc_with_interval(m["weak_single_acc_ood"], m["n_ood"]), first  # with its 95 % interval
    assert tables["steps"]["rows"] == 1 + 19  # header + every step of a 3-round run


def test_index_page_renders_comparison(site_dir, tmp_path):
    page = site_dir / "index.html"
    probe, shot = open_in_browser(page, tmp_path)
    check_images(probe, shot, [
        ("accuracy by run, OOD", {"blue": 0.005, "red": 0.005, "green": 0.005, "purple": 0.005}),
        ("accuracy by run, ID", {"blue": 0.005, "red": 0.005, "green": 0.005, "purple": 0.005}),
        ("ensemble accuracy by round, by run", {"blue": 0.001, "orange": 0.001}),
        ("accuracy by round over seeds", {"blue": 0.002, "red": 0.0005})])
    tables = {t["cls"]: t for t in probe["tables"]}
    assert tables["runs"]["rows"] == 1 + 4  # two seeds, the sci run, the ablation's stored run
    assert tables["paired"]["rows"] > 1 and tables["compare"]["rows"] > 5


def test_report_step_page_for_the_kfp_ui(stored_runs, tmp_path):
    """report.html as the report step writes it (the KFP UI's HTML artifact): the same page, plots embedded."""
    from ensemw2s import site
    from ensemw2s.steps.report import page_record

    store, runs, _ = stored_runs
    rid = "20261201-111500-bbbbbb"
    page = tmp_path / "report.html"
    page.write_text(site.run_page(page_record(runs[rid]["metrics"], store, rid)), encoding="utf-8")
    assert "src=\"data:image/png;base64," in page.read_text() and "<img src=\"accuracy" not in page.read_text()
    probe, shot = open_in_browser(page, tmp_path)
    check_images(probe, shot, RUN_IMAGES)
    assert {t["cls"]: t["rows"] for t in probe["tables"]}["results"] == 7


def _swap_first_image(page, png_b64: str, dest):
    text = page.read_text()
    first = text.index("data:image/png;base64,") + len("data:image/png;base64,")
    dest.write_text(text[:first] + png_b64 + text[text.index('"', first):])
    return dest


def test_the_check_fails_on_a_broken_or_blank_image(site_dir, tmp_path):
    """The check itself: a plot that does not decode, or decodes to a blank picture, must fail it."""
    import base64
    import io

    from PIL import Image

    page = site_dir / "run-20261201-101500-aaaaaa.html"
    broken = _swap_first_image(page, "iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB", tmp_path / "broken.html")
    probe, shot = open_in_browser(broken, tmp_path)
    with pytest.raises(AssertionError, match="did not decode"):
        check_images(probe, shot, RUN_IMAGES)
    buf = io.BytesIO()
    Image.new("RGB", (1080, 408), "white").save(buf, format="PNG")
    blank = _swap_first_image(page, base64.b64encode(buf.getvalue()).decode(), tmp_path / "blank.html")
    probe, shot = open_in_browser(blank, tmp_path)
    with pytest.raises(AssertionError, match="is blank in the screenshot"):
        check_images(probe, shot, RUN_IMAGES)
