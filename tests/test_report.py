"""`dualpath report` and `dualpath run --report`: the files, the verdicts in words, several runs side by
side, bad input, and no plotting library loaded by a run that makes no report."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "paper" / "offline-ds660b-64k.yaml"
SMALL = ("--set", "trace.synth.agents=8", "--set", "trace.synth.turns_mean=10",
         "--set", "systems=[basic,dualpath]")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from harness.cli import main
    root = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("DUALPATH_PROGRESS", "0")
    try:
        assert main(["run", str(SCENARIO), *SMALL, "-o", str(root / "a"), "--report"]) == 0
        assert main(["run", str(SCENARIO), *SMALL, "--set", "trace.synth.seed=2", "-o", str(root / "b")]) == 0
    finally:
        mp.undo()
    return root / "a", root / "b"


def test_run_report_writes_markdown_html_and_at_least_8_pngs(two_runs):
    a, _ = two_runs
    pngs = sorted((a / "figures").glob("*.png"))
    assert len(pngs) >= 8, pngs
    assert all(p.read_bytes().startswith(PNG) and p.stat().st_size > 5000 for p in pngs)
    md = (a / "report.md").read_text()
    assert md.index("## Verdicts") < md.index("## Systems")
    assert "**basic**: limited by" in md and "**dualpath**: limited by" in md
    assert "dualpath over basic: JCT" in md and "the gain comes from" in md
    for p in pngs:
        assert f"figures/{p.name}" in md
    page = (a / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(pngs)  # standalone: every figure embedded
    assert "figures/" not in page and "limited by" in page


def test_report_compares_several_runs_side_by_side(cli, two_runs, tmp_path):
    a, b = two_runs
    res = cli("report", a, b, "-o", tmp_path / "cmp")
    assert res.rc == 0, res.err
    md = (tmp_path / "cmp" / "report.md").read_text()
    for label in ("a/basic", "a/dualpath", "b/basic", "b/dualpath"):
        assert f"| {label} |" in md
    assert len(list((tmp_path / "cmp" / "figures").glob("*.png"))) >= 8


def test_report_on_a_directory_without_results_is_bad_input(cli, tmp_path):
    res = cli("report", tmp_path)
    assert res.rc == 2
    assert "not a results directory" in res.err and len(res.err.strip().splitlines()) == 1
    assert not (tmp_path / "report.md").exists()


def test_a_run_without_report_does_not_import_matplotlib(tmp_path):
    code = ("import sys; from harness.cli import main; "
            f"rc = main(['run', {str(SCENARIO)!r}, '--set', 'trace.synth.agents=4', '--set', 'trace.synth.turns_mean=3', "
            f"'-o', {str(tmp_path / 'r')!r}]); "
            "assert 'matplotlib' not in sys.modules and 'seaborn' not in sys.modules, 'plotting imported'; "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={"DUALPATH_PROGRESS": "0", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
