"""``kdforge report`` on real runs, rendered by headless Chromium: the charts are in the page and on screen.

Chromium is found on PATH; when missing, a root session with apt-get installs the Debian package, and any
other session skips these tests with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from kdforge.app.cli import main
from kdforge.app.pipeline import train

NAMES = ("chromium", "chromium-browser")
APT_TIMEOUT_S = 900
SERIES_BLUE = (0, 114, 178)  # the first series colour
CHARTS = (
    "loss (raw)",
    "loss (weighted)",
    "val/acc1",
    "val/loss",
    "learning rate",
    "loss weights",
    "temperature",
    "time per step (ms)",
    "grad_share",
    "val/agreement",
)


def _find() -> str | None:
    return next((path for path in map(shutil.which, NAMES) if path), None)


def _apt_install() -> str:
    """Install Debian's chromium; returns what went wrong ('' when it worked)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=APT_TIMEOUT_S)
        done = subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
            env=env,
            capture_output=True,
            text=True,
            timeout=APT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return f"apt-get took more than {APT_TIMEOUT_S} s"
    return "" if done.returncode == 0 else done.stderr.strip()[-500:]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a Chromium binary, installed on first use where allowed."""
    if found := _find():
        return found
    if getattr(os, "geteuid", lambda: -1)() != 0 or shutil.which("apt-get") is None:
        pytest.skip(
            "chromium is not installed and this session cannot install it (that needs root and apt-get): "
            "install the Debian package `chromium` to run the report rendering tests."
        )
    error = _apt_install()
    if found := _find():
        return found
    pytest.skip(f"chromium is not installed and `apt-get install chromium` failed: {error or 'no binary after it'}")


def _chromium(browser: str, page: Path, *args: str) -> str:
    """Headless Chromium on `page` with `args` (a fresh profile next to the page); returns its stdout."""
    profile = f"--user-data-dir={page.parent / '.chromium-profile'}"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", profile, *args, page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _charts(dom: str) -> dict[str, list[str]]:
    """Series names of each rendered chart, by its title."""
    return {
        title: re.findall(r"<polyline[^>]*><title>(.*?)</title>", svg)
        for title, svg in re.findall(r'<svg class="chart"[^>]*><title>(.*?)</title>(.*?)</svg>', dom, re.DOTALL)
    }


def _report(args: list[str], capsys: pytest.CaptureFixture) -> Path:
    capsys.readouterr()
    assert main(["report", *args]) == 0
    return Path(capsys.readouterr().out.strip())


def test_a_run_report_renders_with_its_charts(make_config, chromium, tmp_path, capsys):
    kd = {"loss": "kd", "weight": 0.5, "temperature": {"start": 6.0, "end": 2.0}}
    config = make_config(distill={"terms": [kd]}, log={"diagnostics_every_steps": 2})
    run = train(config).run_dir
    page = _report([str(run)], capsys)
    assert page == run / "report.html"
    source = page.read_text()
    assert not re.search(r"\b(src|href)\s*=|<script|<link|@import|url\(", source)  # nothing fetched from elsewhere

    charts = _charts(_chromium(chromium, page, "--dump-dom"))
    assert set(CHARTS) <= set(charts)
    assert len(charts) == source.count('<svg class="chart"')
    assert charts["loss (raw)"] == ["total", "task", "kd"]

    shot = tmp_path / "report.png"
    _chromium(chromium, page, "--hide-scrollbars", "--window-size=1280,2000", f"--screenshot={shot}")
    with Image.open(shot) as image:
        pixels = image.convert("RGB")
        colours = pixels.getcolors(maxcolors=1 << 20)
    assert len(colours) > 50  # text, grid, lines and their anti-aliasing; a blank page has one or two
    assert any(sum(abs(a - b) for a, b in zip(c, SERIES_BLUE, strict=True)) < 30 for _, c in colours)


def test_two_runs_overlay_in_each_chart(make_config, chromium, tmp_path, capsys, monkeypatch):
    baseline = train(make_config(teacher=None, distill={"terms": []}, output={"name": "baseline"})).run_dir
    distilled = train(make_config(output={"name": "distilled"})).run_dir
    monkeypatch.chdir(tmp_path)
    page = _report([str(baseline), str(distilled)], capsys)
    assert page.resolve() == tmp_path / "report.html"

    dom = _chromium(chromium, page.resolve(), "--dump-dom")
    charts = _charts(dom)
    assert charts["val/acc1"] == ["baseline", "distilled"]
    assert charts["loss (raw)"] == [
        "baseline · total",
        "baseline · task",
        "distilled · total",
        "distilled · task",
        "distilled · kd",
    ]
    assert charts["loss weights"] == ["distilled · task", "distilled · kd"]  # the baseline has no terms
    assert "Best metrics compared" in dom
