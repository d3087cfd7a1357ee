"""The HTTP driver's request forms and run rules against the scripted server (tests/scripted_server.py):
chat and text bodies, headers and extra_body, the stall timeout, the failure-share abort window, the
min_ok_share exit code and the table's incomplete mark, and the scenario keys that configure them."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.http_client import request_body
from harness.results import load_results

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scripted_server import Reply, ScriptedServer  # noqa: E402
from test_http_driver import (FAST, SYSTEM, drive, free_port, scenario_trace_of, small_trace,  # noqa: E402
                              write_scenario)

pytestmark = pytest.mark.timeout(90)


def test_chat_and_text_bodies_carry_what_servers_need():
    messages = '[{"role":"user","content":" the water"}]'
    chat = json.loads(request_body("m", messages, 7, ignore_eos=True, token_ids=False, api="chat",
                                   extra={"top_k": 1, "temperature": 0.5}))
    assert chat["messages"] == [{"role": "user", "content": " the water"}]
    assert chat["max_tokens"] == chat["max_completion_tokens"] == 7 and chat["stream"] is True
    assert chat["stream_options"] == {"include_usage": True} and chat["ignore_eos"] is True
    assert chat["top_k"] == 1 and chat["temperature"] == 0.5, "extra_body is merged over the defaults"
    assert "prompt" not in chat and "return_token_ids" not in chat
    text = json.loads(request_body("m", '" the water"', 3, ignore_eos=False, token_ids=False))
    assert text["prompt"] == " the water" and "max_completion_tokens" not in text and "ignore_eos" not in text


def test_headers_and_extra_body_reach_the_server():
    trace = small_trace(2, seed=1)
    with ScriptedServer(FAST) as srv:
        drive(srv.url, trace, headers={"X-Team": "bench", "X-Priority": "7"}, extra_body={"priority": 3})
        log = list(srv.completions)
    assert len(log) == trace.num_rounds
    for c in log:
        assert c.headers["x-team"] == "bench" and c.headers["x-priority"] == "7"
        assert c.body["priority"] == 3 and c.body["return_token_ids"] is True


def test_a_stream_that_stalls_is_a_timeout_after_stall_timeout_s():
    trace = small_trace(1, seed=1)
    with ScriptedServer({"a00000/0": Reply(first_token_s=0.005, hang_after=2), None: FAST}) as srv:
        run = drive(srv.url, trace, timeout_s=30.0, stall_timeout_s=0.3)
    req = run.requests.sort_values("round").reset_index(drop=True)
    first = req.iloc[0]
    assert first["status"] == "timeout" and "no byte from the server for 0.3 s" in first["error"]
    assert 0.3 <= first["t_done"] - first["t_first_token"] < 2.0, "ended by the stall, not by timeout_s"
    assert (req["status"].iloc[1:] == "ok").all()


def test_more_than_the_failure_share_in_the_window_aborts():
    """Two of every three requests fail (never 20 in a row): the window of 10 breaks the 0.5 share."""
    trace = small_trace(3, seed=2, turns_mean=10, append_mean=30, gen_mean=5)
    assert trace.num_rounds >= 15

    def script(req):
        return FAST if req.seq % 3 == 0 else Reply(status=503)
    with ScriptedServer(script) as srv:
        run = drive(srv.url, trace, window_requests=10, max_failure_share=0.5)
    aborted = run.facts["driver"]["aborted"]
    assert aborted and "of the last 10 requests failed" in aborted and "HTTP 503" in aborted
    assert 10 <= len(run.requests) < trace.num_rounds
    statuses = (run.requests["status"] != "ok").to_numpy()
    assert statuses[-10:].sum() > 5 and not np.all(statuses)


def test_too_few_ok_requests_exit_1_and_the_table_marks_the_system_incomplete(cli, tmp_path):
    """No abort rule breaks (failures interleave with successes, the window never fills), but fewer than
    min_ok_share of the requests completed: exit 1, one error line, JCT starred."""
    with ScriptedServer(lambda req: FAST if req.agent_id == "a00000" else Reply(status=500)) as srv:
        scen = write_scenario(tmp_path, srv.url, agents=4, seed=3)
        res = cli("run", scen, "-o", tmp_path / "out")
    rounds = scenario_trace_of(scen).num_rounds
    summary = load_results(tmp_path / "out")["summary"]
    s = summary["systems"][SYSTEM]
    ok = s["counts"]["requests"]["ok"]
    assert res.rc == 1 and 0 < ok < rounds / 2 and s["complete"] is False and summary["status"] == "ok"
    errors = [line for line in res.err_lines if line.startswith("error:")]
    assert len(errors) == 1 and "abort.min_ok_share (0.5)" in errors[0] and "HTTP 500" in errors[0], res.err
    assert f"{ok} of {rounds} requests completed" in errors[0]
    assert res.err_lines[-1] == f"results: {tmp_path / 'out'}"
    table = res.out.splitlines()
    row = next(line for line in table if line.startswith(SYSTEM)).split()
    assert row[2].endswith("*"), "a bare JCT for a system with failed rounds"
    assert any(line.startswith("* incomplete (external)") for line in table)


def test_a_lower_min_ok_share_accepts_the_same_run(cli, tmp_path):
    with ScriptedServer(lambda req: FAST if req.agent_id == "a00000" else Reply(status=500)) as srv:
        scen = write_scenario(tmp_path, srv.url, agents=4, seed=3, abort={"min_ok_share": 0.1})
        res = cli("run", scen, "-o", tmp_path / "out", "--json")
    assert res.rc == 0 and not [line for line in res.err_lines if line.startswith("error:")], res.err


@pytest.mark.parametrize("endpoint, top, key", [
    ({"api": "chat", "prompt": "token_ids"}, {}, "endpoint.prompt"),
    ({"api": "responses"}, {}, "endpoint.api"),
    ({"tokenizer": "tok.json"}, {}, "endpoint.tokenizer"),        # only with prompt: text
    ({"prompt": "text", "tokenizer": "missing.json"}, {}, "endpoint.tokenizer"),
    ({"stall_timeout_s": 0}, {}, "endpoint.stall_timeout_s"),
    ({"headers": {"X-A": [1]}}, {}, "endpoint.headers.X-A"),
    ({"extra_body": {"stream": False}}, {}, "endpoint.extra_body.stream"),
    ({"extra_body": [1]}, {}, "endpoint.extra_body"),
    ({}, {"abort": {"max_failure_share": 1.5}}, "abort.max_failure_share"),
    ({}, {"abort": {"window_requests": 0}}, "abort.window_requests"),
    ({}, {"abort": {"max_consecutive": 3}}, "abort.max_consecutive"),
])
def test_bad_endpoint_and_abort_keys_are_one_line_naming_the_key(cli, tmp_path, endpoint, top, key):
    scen = write_scenario(tmp_path, f"http://127.0.0.1:{free_port()}", endpoint=endpoint, **top)
    res = cli("run", scen, "-o", tmp_path / "out")
    assert res.rc == 2 and len(res.err_lines) == 1 and f"{key}:" in res.err, res.err
    assert res.err.startswith(str(scen)) and not (tmp_path / "out").exists()


def test_the_resolved_scenario_shows_the_endpoint_defaults(cli, tmp_path):
    from harness.scenario import load_scenario

    scen = write_scenario(tmp_path, "http://127.0.0.1:9")
    ep = load_scenario(scen)["endpoint"]
    assert (ep["api"], ep["prompt"], ep["stall_timeout_s"]) == ("completions", "token_ids", 60.0)
    chat = load_scenario(scen, ["endpoint.api=chat"])["endpoint"]
    assert (chat["api"], chat["prompt"]) == ("chat", "text")


def test_a_listener_that_never_accepts_ends_the_run_after_one_stall():
    """The kernel completes the connections (backlog) but nothing ever reads them: 24 agents' first requests
    time out together after stall_timeout_s, which breaks max_consecutive_failures; the rest are cancelled."""
    import socket
    import time

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        t0 = time.monotonic()
        run = drive(f"http://127.0.0.1:{listener.getsockname()[1]}", small_trace(24, seed=1),
                    stall_timeout_s=0.5, timeout_s=600)
        wall = time.monotonic() - t0
    assert 0.5 <= wall < 3.0, wall
    assert run.facts["driver"]["aborted"].startswith("aborted: 20 requests in a row failed")
    assert len(run.requests) == 20 and (run.requests["status"] == "timeout").all()
    assert set(run.agents["status"]) <= {"error", "cancelled"} and (run.agents["status"] == "cancelled").sum() == 4


def test_a_404_on_every_request_says_which_url_and_keys_to_check():
    trace = small_trace(4, seed=1, turns_mean=8, append_mean=50, gen_mean=10)
    with ScriptedServer(FAST) as srv:  # it serves /v1/completions only
        run = drive(srv.url, trace, api="chat", prompt="text")
    aborted = run.facts["driver"]["aborted"]
    assert "HTTP 404" in aborted and f"POST {srv.url}/v1/chat/completions was not found" in aborted
    assert "endpoint.api" in aborted
