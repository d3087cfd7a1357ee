"""The driver against a server no one here wrote: GuideLLM's mock server (`guidellm mock-server`, text
prompts only, output capped at 128 of its tokens, a mock tokenizer that counts every word and every run
of whitespace as a token).

GuideLLM pulls in torch and transformers (gigabytes, minutes), so the test is opt-in as well as slow:
DUALPATH_GUIDELLM=1 installs it into a throwaway venv (skipped, with pip's reason, when pip cannot), and
DUALPATH_GUIDELLM=/path/to/bin/guidellm uses one already installed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_http_driver import SYSTEM, free_port, scenario_trace_of, write_scenario  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

INSTALL_S = 3000
START_S = 120
GUIDELLM_CAP = 128  # guidellm mock-server --output-tokens default


@pytest.fixture(scope="module")
def guidellm(tmp_path_factory) -> str:
    given = os.environ.get("DUALPATH_GUIDELLM", "")
    if not given:
        pytest.skip("opt-in: DUALPATH_GUIDELLM=1 installs guidellm (with torch: minutes) into a throwaway venv, "
                    "DUALPATH_GUIDELLM=/path/to/guidellm uses an installed one")
    if given != "1":
        if not Path(given).is_file():
            pytest.fail(f"DUALPATH_GUIDELLM={given}: no such executable")
        yield given
        return
    venv = tmp_path_factory.mktemp("guidellm") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "guidellm"]
    try:
        res = subprocess.run(pip, capture_output=True, text=True, timeout=INSTALL_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip install guidellm took more than {INSTALL_S} s")
    if res.returncode != 0:
        lines = [line for line in res.stderr.splitlines() if line.startswith("ERROR")] or res.stderr.splitlines()[-1:]
        pytest.skip(f"pip cannot install guidellm: {' '.join(lines)[:300]}")
    yield str(venv / "bin" / "guidellm")
    shutil.rmtree(venv, ignore_errors=True)


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_against_guidellms_mock_server_every_request_completes_and_the_cap_is_warned(guidellm, cli, tmp_path):
    port = free_port()
    ttft_ms, itl_ms = 20, 5
    proc = subprocess.Popen([guidellm, "mock-server", "--host", "127.0.0.1", "--port", str(port),
                             "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while not _up(url):
            assert proc.poll() is None, "guidellm mock-server exited"
            assert time.monotonic() < deadline, f"guidellm mock-server not up within {START_S} s"
            try:
                proc.wait(0.2)  # the poll interval
            except subprocess.TimeoutExpired:
                pass
        scen = write_scenario(tmp_path, url, agents=6, seed=3, endpoint={"api": "chat", "prompt": "text"},
                              synth={"gen_mean": 150, "max_context": 8000})
        res = cli("run", scen, "-o", tmp_path / "out", "--json")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its worker processes too
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.poll() is not None
    assert res.rc == 0, res.err
    s = json.loads(res.out)["systems"][SYSTEM]
    trace = scenario_trace_of(scen)
    assert s["counts"]["requests"]["ok"] == trace.num_rounds and s["complete"] is True
    capped = int((trace.col("gen_tokens") > GUIDELLM_CAP).sum())
    assert capped and s["counts"]["short_output"] == capped
    assert any(f"{capped} request(s) ended before max_tokens" in line for line in res.err_lines), res.err
    # its mock tokenizer counts whitespace runs as tokens: about 2 per word, and the driver says so
    assert 1.5 < s["server_prompt_tokens_ratio"] < 2.1
    assert any(re.search(r"server counted \d\.\d+x the trace's prompt tokens", line) for line in res.err_lines)
    # no log of its own timings to compare with: the configured pace bounds what can be seen
    assert s["latency"]["ttft_from_sent_s"]["p50"] >= ttft_ms / 1e3
    assert s["latency"]["tpot_s"]["p50"] >= 0.9 * itl_ms / 1e3
