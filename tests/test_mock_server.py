"""`dualpath mock-server` as a real process, and `dualpath run` against it: a text-only chat server, the
failures the driver must make loud (400 to everything, a server that hangs, one that dies, SIGTERM, a
failed reset_url, output cut short by a server cap), and the README's example as written.

Every server binds 127.0.0.1 on a free port (`--port 0`; its first stderr line names the port), and is
stopped by the test that started it and checked gone. No sleeps as synchronisation: waits are bounded
polls on a process or a file.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.mock_server import LISTENING
from harness.results import load_results, read_streams

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_http_driver import SYSTEM, free_port, scenario_trace_of, write_scenario  # noqa: E402
from test_prompts_text import make_tokenizer_json  # noqa: E402

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
TOL_S = 0.002
START_S = 30.0


class MockServer:
    """`dualpath mock-server --port 0 ARGS` in a subprocess; `url` once it listens; `stop()` ends it."""

    def __init__(self, *args, log: Path | None = None):
        cmd = [sys.executable, "-m", "harness.cli", "mock-server", "--port", "0", *map(str, args)]
        if log is not None:
            cmd += ["--log", str(log)]
        self.log = log
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.ready.wait(START_S):
            self.stop()
            raise AssertionError(f"mock-server did not start within {START_S} s: {self.lines}")
        match = re.search(r"http://127\.0\.0\.1:(\d+)", self.lines[0])
        assert self.lines[0].startswith(LISTENING) and match, self.lines
        self.url = match.group(0)

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self.ready.set()
        self.ready.set()

    def records(self) -> list[dict]:
        if self.log is None or not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def stop(self) -> int | None:
        """SIGTERM (a server that died already stays as it is); it must be gone within 10 s."""
        killed = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                killed = True
                self.proc.kill()
                self.proc.wait(10)
        self.reader.join(10)
        assert self.proc.poll() is not None, "the mock server is still running"
        assert not killed, "the mock server did not stop on SIGTERM within 10 s"
        return self.proc.returncode

    def __enter__(self) -> "MockServer":
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False


def run(cli, scen: Path, out: Path, *extra):
    res = cli("run", scen, "-o", out, "--json", *extra)
    return res, (json.loads(res.out) if res.out.strip() else None)


def chat_endpoint(**more) -> dict:
    return {"api": "chat", "prompt": "text", "model": "mock", **more}


# ----- a text-only chat server -------------------------------------------------------------------------
def _chat_attempt(cli, tmp_path: Path, k: int) -> dict:
    log = tmp_path / f"server-{k}.jsonl"
    with MockServer("--api", "chat", "--prompt", "text", "--ttft-ms", 40, "--itl-ms", 8, log=log) as srv:
        scen = write_scenario(tmp_path, srv.url, name=f"chat-{k}", agents=4, seed=3, endpoint=chat_endpoint())
        res, summary = run(cli, scen, tmp_path / f"out-{k}")
        records = {r["request_id"]: r for r in srv.records()}
    assert res.rc == 0, res.err
    trace = scenario_trace_of(scen)
    req = load_results(tmp_path / f"out-{k}")["requests"]
    s = summary["systems"][SYSTEM]
    assert len(req) == trace.num_rounds and (req["status"] == "ok").all(), "every request completed"
    assert s["complete"] is True and summary["status"] == "ok"
    ids = req["agent_id"] + "/" + req["round"].astype(str)
    server = [records[i] for i in ids]
    assert all(r["status"] == "ok" for r in server)
    # every request's prompt, as the server counted it, is within 5 % of the trace's
    ratio = req["server_prompt_tokens"].to_numpy() / req["prompt_tokens"].to_numpy()
    assert np.all(np.abs(ratio - 1) <= 0.05), ratio
    assert abs(s["server_prompt_tokens_ratio"] - 1) <= 0.05
    assert not any("prompt tokens" in w for w in s["warnings"])
    assert (req["output_tokens"] == req["max_tokens"]).all() and s["counts"]["short_output"] == 0
    # the text contexts share prefixes: the server's prefix cache saw most of each later round's prompt
    assert s["hit_rate_achieved"] > 0.8 * s["hit_rate_expected"]
    ttft = (req["t_first_token"] - req["t_sent"]).to_numpy()
    tpot = ((req["t_done"] - req["t_first_token"]) / (req["output_tokens"] - 1)).to_numpy()
    many = req["output_tokens"].to_numpy() > 1
    return {"ttft": float(np.median(np.abs(ttft - [r["ttft_s"] for r in server]))),
            "tpot": float(np.median(np.abs(tpot[many] - np.array([r["tpot_s"] for r in server])[many])))}


@pytest.mark.slow
def test_a_text_only_chat_server_completes_every_request_and_agrees_with_its_log(cli, tmp_path):
    """api chat + prompt text against `mock-server --api chat --prompt text`: every request ok, the server's
    prompt token counts within 5 %, and TTFT (from the send) and TPOT within 2 ms of what the server logged
    at the median. The server is another process on this shared 2-core VM: a burst of CPU steal can shift a
    whole run by a few ms, so up to 3 fresh runs are tried; every other check holds on each."""
    attempts = []
    for k in range(3):
        attempts.append(_chat_attempt(cli, tmp_path, k))
        if max(attempts[-1].values()) <= TOL_S:
            break
    print("median |driver - server| s:", attempts)
    assert max(attempts[-1].values()) <= TOL_S, attempts


def test_with_one_tokenizer_on_both_sides_the_server_counts_the_traces_prompt_tokens(cli, tmp_path):
    """Completions with text prompts sized by a tokenizer.json (most words several tokens in it), against
    the mock server counting with the same file: every request's prompt is the trace's length."""
    tok = make_tokenizer_json(tmp_path)
    with MockServer("--prompt", "text", "--tokenizer", tok, "--ttft-ms", 5, "--itl-ms", 1) as srv:
        scen = write_scenario(tmp_path, srv.url + "/v1", agents=4, seed=5,  # the /v1 form OpenAI clients take
                              endpoint={"model": "mock", "prompt": "text", "tokenizer": str(tok)})
        res, summary = run(cli, scen, tmp_path / "out")
    assert res.rc == 0, res.err
    req = load_results(tmp_path / "out")["requests"]
    assert len(req) == scenario_trace_of(scen).num_rounds and (req["status"] == "ok").all()
    assert (req["server_prompt_tokens"] == req["prompt_tokens"]).mean() > 0.9, "not sized in the server's tokens"
    assert np.all(np.abs(req["server_prompt_tokens"] / req["prompt_tokens"] - 1) <= 0.05)
    assert summary["systems"][SYSTEM]["hit_rate_achieved"] > 0.5


# ----- failures are loud ----------------------------------------------------------------------------------
@pytest.mark.parametrize("server_args, endpoint, error", [
    (("--fail-status", 400), {}, "HTTP 400"),
    (("--prompt", "text"), {"prompt": "token_ids"}, "prompt must be a string"),  # GuideLLM's mock: text only
])
def test_a_server_that_refuses_everything_exits_1_with_one_error_line(cli, tmp_path, server_args, endpoint, error):
    with MockServer(*server_args) as srv:
        scen = write_scenario(tmp_path, srv.url, agents=6, seed=2, endpoint={"model": "mock", **endpoint})
        res, summary = run(cli, scen, tmp_path / "out")
    assert res.rc == 1, res.err
    errors = [line for line in res.err_lines if line.startswith("error:")]
    assert len(errors) == 1 and error in errors[0] and "20 requests in a row failed" in errors[0], res.err
    assert "0 of" in errors[0] and SYSTEM in errors[0]
    assert res.err_lines[-1] == f"results: {tmp_path / 'out'}"
    assert summary["status"] == "aborted" and summary["systems"][SYSTEM]["complete"] is False
    assert summary["systems"][SYSTEM]["counts"]["requests"]["error"] == 20


def test_a_hanging_server_ends_the_run_within_the_stall_timeout(cli, tmp_path):
    """Accepts, reads, never answers: every request is a timeout after endpoint.stall_timeout_s; 24 agents
    send at once, so the 20 in a row that abort the run fail together, and the rest are cancelled."""
    stall = 1.0
    with MockServer("--hang") as srv:
        scen = write_scenario(tmp_path, srv.url, agents=24, seed=2,
                              endpoint={"model": "mock", "timeout_s": 600, "stall_timeout_s": stall})
        t0 = time.monotonic()
        res, summary = run(cli, scen, tmp_path / "out")
        wall = time.monotonic() - t0
    assert res.rc == 1, res.err
    assert stall <= wall < stall + 5.0, wall  # 5 s: set-up, 24 connections and the summary on a busy VM
    req = load_results(tmp_path / "out")["requests"]
    assert len(req) == 20 and (req["status"] == "timeout").all()
    assert req["error"].str.contains("no byte from the server for 1 s").all()
    assert summary["status"] == "aborted"


def test_a_server_that_dies_exits_1_aborted_and_keeps_every_row(cli, tmp_path):
    log = tmp_path / "server.jsonl"
    with MockServer("--die-after", 12, "--ttft-ms", 5, "--itl-ms", 1, log=log) as srv:
        scen = write_scenario(tmp_path, srv.url, agents=2, seed=1, endpoint={"model": "mock"},
                              synth={"turns_mean": 30, "append_mean": 30, "gen_mean": 8, "max_context": 8000,
                                     "first_append_mean": 100})
        res, summary = run(cli, scen, tmp_path / "out")
        assert srv.proc.wait(10) == 1, "the server ended itself"
        served = [r for r in srv.records() if r["status"] == "ok"]
    assert res.rc == 1, res.err
    assert summary["status"] == "aborted"
    req = load_results(tmp_path / "out")["requests"]
    ok = req[req["status"] == "ok"]
    assert sorted(ok["agent_id"] + "/" + ok["round"].astype(str)) == sorted(r["request_id"] for r in served)
    assert len(ok) >= 10 and (req["status"] != "ok").sum() == 20


@pytest.mark.slow
def test_sigterm_exits_143_with_the_summary_written_and_rows_kept(tmp_path):
    out = tmp_path / "out"
    with MockServer("--ttft-ms", 20, "--itl-ms", 40) as srv:
        scen = write_scenario(tmp_path, srv.url, agents=6, seed=3, endpoint={"model": "mock"})
        env = {**os.environ, "DUALPATH_PROGRESS": "0"}
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(scen), "-o", str(out)], cwd=REPO,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            seen, deadline = 0, time.monotonic() + 60
            while time.monotonic() < deadline and not seen and proc.poll() is None:
                try:
                    proc.wait(timeout=0.05)  # the poll interval; returns early if it exited
                except subprocess.TimeoutExpired:
                    pass
                if (out / "requests.arrows").exists():
                    seen = read_streams(out, "requests").num_rows
            assert proc.poll() is None and seen, "no rows on disk before the run ended"
            proc.send_signal(signal.SIGTERM)
            stdout, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == 143, stderr
    assert "terminated" in stderr and stderr.splitlines()[-1] == f"results: {out}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["systems"][SYSTEM]["complete"] is False
    req = load_results(out)["requests"]
    assert seen <= len(req) < scenario_trace_of(scen).num_rounds and (req["status"] == "ok").all()


def test_a_failed_reset_url_is_one_line_exit_2_and_leaves_no_results(cli, tmp_path):
    with MockServer() as srv:
        scen = write_scenario(tmp_path, srv.url, endpoint={"model": "mock",
                                                           "reset_url": f"http://127.0.0.1:{free_port()}/reset"})
        res = cli("run", scen, "-o", tmp_path / "out")
        res404 = cli("run", write_scenario(tmp_path, srv.url, name="r404", endpoint={
            "model": "mock", "reset_url": srv.url + "/no_such_reset"}), "-o", tmp_path / "out404")
    for r in (res, res404):
        assert r.rc == 2 and len(r.err_lines) == 1, r.err
        assert r.err.startswith(str(tmp_path)) and "endpoint.reset_url" in r.err
    assert "HTTP 404" in res404.err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out404").exists()


def test_a_server_cap_on_output_is_counted_and_warned(cli, tmp_path):
    with MockServer("--max-tokens-cap", 8) as srv:
        scen = write_scenario(tmp_path, srv.url, agents=4, seed=3, endpoint={"model": "mock"},
                              synth={"gen_mean": 30})
        res, summary = run(cli, scen, tmp_path / "out")
    assert res.rc == 0, res.err
    req = load_results(tmp_path / "out")["requests"]
    short = int((req["output_tokens"] < req["max_tokens"]).sum())
    s = summary["systems"][SYSTEM]
    assert short > 0 and s["counts"]["short_output"] == short and (req["output_tokens"] <= 8).all()
    warned = [line for line in res.err_lines if "ended before max_tokens" in line]
    assert len(warned) == 1 and f"{short} request(s)" in warned[0]


# ----- the README ------------------------------------------------------------------------------------------
def readme_commands() -> tuple[str, str]:
    """The mock-server and run commands of the README's "Driving a real server" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Driving a real server"):]
    section = section[:section.index("\n### ", 10)]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [line.split("#")[0].strip() for line in block.splitlines()]
    mock = next(line for line in lines if line.startswith("dualpath mock-server"))
    run_cmd = next(line for line in lines if line.startswith("dualpath run"))
    return mock, run_cmd


@pytest.mark.slow
def test_the_readme_example_runs_as_written_against_the_mock_server(tmp_path):
    mock, run_cmd = readme_commands()
    args = mock.rstrip("&").split()[2:]
    at = args.index("--port")
    port = args[at + 1]
    del args[at:at + 2]  # the test's server takes a free port instead
    with MockServer(*args) as srv:
        env = {**os.environ, "DUALPATH_PROGRESS": "0"}
        scenario = yaml.safe_load((REPO / run_cmd.split()[2]).read_text())
        moved = [f"endpoint.{k}={v.replace(f':{port}', ':' + srv.url.rsplit(':', 1)[1])}"
                 for k, v in scenario["endpoint"].items() if k.endswith("url")]
        argv = run_cmd.split()[2:] + ["-o", str(tmp_path / "out")] + [a for m in moved for a in ("--set", m)]
        proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", *argv], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=100)
    assert scenario["endpoint"]["url"].endswith(f":{port}"), "the README's server and scenario agree on the port"
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "ok" and all(s["complete"] for s in summary["systems"].values())
