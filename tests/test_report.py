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


def test_report_of_a_repeated_run_draws_one_repeat_over_time_and_pools_latencies(cli, tmp_path):
    from harness.report import load_run
    out = tmp_path / "rep"
    res = cli("run", SCENARIO, *SMALL, "--repeats", "2", "-o", out)
    assert res.rc == 0, res.err
    assert "basic: limited by " in res.out and "None" not in res.out
    run = load_run(out)
    assert set(run.agents["repeat"]) == {0} and set(run.all_requests["repeat"]) == {0, 1}
    assert len(run.all_requests) == 2 * len(run.requests)
    assert run.attribution["basic"]["bottleneck"]["resource"]
    rep = cli("report", out, "-o", tmp_path / "r")
    assert rep.rc == 0, rep.err
    assert len(list((tmp_path / "r" / "figures").glob("*.png"))) >= 8


def capacity_dir(path: Path, name: str, caps: dict) -> Path:
    import json
    path.mkdir()
    probes = {s: [{"rate_aps": r, "passed": r <= c, "reason": "within the SLO" if r <= c else "mean TTFT 9 s > 4 s",
                   "requests": 100, "ttft_s": 0.5 + 4 * r / c, "tpot_s": 0.03 + 0.02 * r / c}
                  for r in (c / 2, c, 2 * c)] for s, c in caps.items()}
    summary = {"run_id": name, "status": "done", "capacity_ratio": {"dualpath/basic": caps["dualpath"] / caps["basic"]},
               "capacity": {s: {"capacity_aps": c, "probes": probes[s]} for s, c in caps.items()},
               "meta": {"scenario": {"name": name, "slo": {"ttft_s": 4.0, "tpot_s": 0.05}}}}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_capacity_results_give_ttft_and_tpot_against_rate_with_the_slo(cli, two_runs, tmp_path):
    cap = capacity_dir(tmp_path / "cap", "online", {"basic": 0.2, "dualpath": 0.45})
    res = cli("report", cap, two_runs[0], "-o", tmp_path / "out")
    assert res.rc == 0, res.err
    figures = {p.stem for p in (tmp_path / "out" / "figures").glob("*.png")}
    assert {"capacity_ttft", "capacity_tpot", "jct"} <= figures
    md = (tmp_path / "out" / "report.md").read_text()
    assert "**cap/basic**: capacity 0.2 agents/s within TTFT <= 4 s and TPOT <= 0.05 s" in md
    assert "the next probe (0.4 agents/s) failed: mean TTFT 9 s > 4 s" in md
    assert "capacity dualpath/basic: 2.25x" in md
    alone = cli("report", cap)  # a capacity search alone: its two figures, no empty ones
    assert alone.rc == 0, alone.err
    assert {p.stem for p in (cap / "figures").glob("*.png")} == {"capacity_ttft", "capacity_tpot"}
