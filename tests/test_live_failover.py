"""Failover of the live cluster (issue 14, "Faults"): the dispatcher forgets a dead engine
(`Dispatcher.remove_engine`), and a real 1P2D / 2P1D cluster whose DE / PE is killed mid-request fails the
request it held with an error naming it, serves later requests on the engines left, and names the dead
engine in /health."""
from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.policy import SYSTEMS, EngineView
from engines.policy.dispatch import Dispatcher
from harness.prometheus import parse
from test_live_cluster import gone

LIVE = Path(__file__).resolve().parents[1] / "scenarios" / "live"
GB = 1e9


# ----- the dispatcher ------------------------------------------------------------------------------------
def cluster_views(n_pe, n_de, de_group_size):
    pes = [EngineView(id=i, node=i) for i in range(n_pe)]
    des = [EngineView(id=i, node=n_pe + i, hbm_free_bytes=10 * GB, group=i // de_group_size) for i in range(n_de)]
    return pes, des, n_pe + n_de


@pytest.mark.parametrize("system", ["basic", "dualpath"])
def test_a_removed_de_gets_no_more_requests_and_its_group_queue_moves(system):
    pes, des, nodes = cluster_views(1, 2, de_group_size=1)  # dualpath: one DE per group
    d = Dispatcher(SYSTEMS[system], pes, des, nodes=nodes, alpha=1e9, beta=1e9, z_factor=1.05)
    for r in range(4):
        d.submit(r, 100, 6 * GB, 0)  # a DE holds one at a time
    first = d.dispatch()
    assert sorted(x.de for x in first) == [0, 1]
    held_by_0 = [x.request for x in first if x.de == 0]
    assert d.remove_engine("de", 0) == [] and d.remove_engine("de", 0) == []
    assert des[0].tok == 0 and des[0].hbm_free_bytes == 0
    d.prefill_done(first[0].pe, 100)
    d.prefill_done(first[1].pe, 100)
    done = [x for x in first if x.de == 1]
    d.decode_done(1, 100, 6 * GB)
    later = d.dispatch()
    assert [x.de for x in later] == [1] and later[0].request not in held_by_0 + [done[0].request]
    d.decode_done(1, 100, 6 * GB)
    assert [x.de for x in d.dispatch()] == [1] and d.queued == 0


@pytest.mark.parametrize("system", ["basic", "dualpath"])
def test_removing_the_last_engine_of_a_role_hands_back_every_queued_request(system):
    pes, des, nodes = cluster_views(2, 1, de_group_size=1)
    d = Dispatcher(SYSTEMS[system], pes, des, nodes=nodes, alpha=1e9, beta=1e9, z_factor=1.05)
    for r in range(3):
        d.submit(r, 100, 6 * GB, 0)
    assert len(d.dispatch()) == 1
    assert d.remove_engine("pe", 1) == []
    assert sorted(d.remove_engine("de", 0)) == [1, 2] and d.queued == 0 and d.dispatch() == []


@settings(max_examples=60, deadline=None)
@given(system=st.sampled_from(["basic", "dualpath"]), n_pe=st.integers(1, 3), n_de=st.integers(1, 4),
       group=st.integers(1, 2), ops=st.lists(st.tuples(st.sampled_from(["submit", "done", "kill"]),
                                                        st.integers(0, 7)), max_size=40))
def test_no_decision_names_a_removed_engine_and_every_request_is_accounted_once(system, n_pe, n_de, group, ops):
    pes, des, nodes = cluster_views(n_pe, n_de, group)
    d = Dispatcher(SYSTEMS[system], pes, des, nodes=nodes, alpha=1e9, beta=1e9, z_factor=1.05)
    removed, running, outcome, spec = set(), [], {}, {}

    def take(decisions):
        for x in decisions:
            assert ("pe", x.pe) not in removed and ("de", x.de) not in removed
            assert x.request not in outcome
            outcome[x.request] = "dispatched"
            running.append(x)

    def finish(x):  # what the router reports when a request ends (ok or failed): nothing for a dead engine
        length, need = spec[x.request]
        if ("pe", x.pe) not in removed:
            d.prefill_done(x.pe, length)
        if ("de", x.de) not in removed:
            d.decode_done(x.de, length, need)

    for op, k in ops:
        if op == "submit" and not (any(("pe", i) not in removed for i in range(n_pe))
                                   and any(("de", i) not in removed for i in range(n_de))):
            continue  # the router answers 503 then
        if op == "submit":
            spec[len(spec)] = (10 + k, GB * (1 + k))
            d.submit(len(spec) - 1, 10 + k, GB * (1 + k), 5 * k)
        elif op == "done" and running:
            finish(running.pop(k % len(running)))
        elif op == "kill":
            role, n = ("pe", n_pe) if k % 2 else ("de", n_de)
            i = k % n
            for h in d.remove_engine(role, i):
                assert h not in outcome
                outcome[h] = "failed"
            removed.add((role, i))
            for x in [x for x in running if (x.pe if role == "pe" else x.de) == i]:
                running.remove(x)
                finish(x)  # the requests it held fail
        take(d.dispatch())
    for role, e in [("pe", e) for e in pes] + [("de", e) for e in des]:  # the books of the engines left
        if (role, e.id) not in removed:                                   # hold exactly their running requests
            mine = [x for x in running if (x.pe if role == "pe" else x.de) == e.id]
            assert e.seq == len(mine) and e.tok == sum(spec[x.request][0] for x in mine)
    assert len(outcome) + d.queued == len(spec)


# ----- a real cluster ------------------------------------------------------------------------------------
def _scenario(tmp_path, pe, de, hardware):
    from harness.scenario import load_scenario
    path = tmp_path / "fail.yaml"
    path.write_text((LIVE / "io-bound-1p1d.yaml").read_text())
    return load_scenario(str(path), [f"cluster.prefill_nodes={pe}", f"cluster.decode_nodes={de}",
                                     f"hardware={LIVE / hardware}", f"model={LIVE / 'live-tiny.model.yaml'}"])


async def _held_by(session, cluster, role, timeout_s=30.0) -> str:
    """The engine of `role` that holds a request now (its requests gauge is 1), polled (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        for name, url in cluster.metrics_urls.items():
            if name.startswith(role):
                async with session.get(url) as r:
                    held = sum(v for n, _, v in parse(await r.text()) if n == "dualpath_engine_requests")
                if held >= 1:
                    return name
        await asyncio.sleep(0.02)  # polling a condition, bounded
    pytest.fail(f"no {role} held the request within {timeout_s} s")


async def _complete(session, url, prompt, max_tokens):
    async with session.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens}) as r:
        return r.status, await r.json()


@pytest.mark.parametrize("system,shape,role,hardware,prompt_len,max_tokens", [
    ("dualpath", (1, 2), "de", "live-host.hardware.yaml", 300, 1500),       # decode ~5 s
    ("basic", (2, 1), "pe", "live-host-slow-gpu.hardware.yaml", 2000, 4),   # prefill ~3 s
])
def test_a_killed_engine_fails_what_it_held_and_the_router_serves_on_the_others(
        tmp_path, system, shape, role, hardware, prompt_len, max_tokens):
    from harness.backend_live import Cluster
    scenario = _scenario(tmp_path, *shape, hardware)

    async def scenario_run(cluster):
        url = cluster.router_url
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
            held = asyncio.create_task(_complete(s, url, list(range(1, prompt_len + 1)), max_tokens))
            victim = await _held_by(s, cluster, role)
            os.kill(cluster.pid_of(victim), signal.SIGKILL)
            status, body = await held
            assert status == 502 and f"{victim} died while it held this request" in body["error"]["message"]
            async with s.get(url + "/health") as r:
                health = await r.json()
            assert r.status == 503 and health["gone"] == [victim] and victim in health["dead"]
            # at once, and more tokens than the dead engine held: had the dispatcher kept it, it would be the
            # least loaded again before these are placed
            later = await asyncio.gather(*(_complete(s, url, list(range(10_000 * (i + 1), 10_000 * (i + 1) + 400)), 3)
                                           for i in range(8)))
            assert [st for st, _ in later] == [200] * 8
            assert {b["dualpath"][role] for _, b in later} == {f"{role}{1 - int(victim[-1])}"}
            assert all(len(b["choices"][0]["token_ids"]) == 3 for _, b in later)

    with Cluster(scenario, system) as cluster:
        pids = cluster.pids()
        asyncio.run(scenario_run(cluster))
    assert gone(pids)


def test_serve_keeps_serving_when_an_engine_dies_and_stops_when_a_role_is_gone(tmp_path):
    import json
    import subprocess
    import sys
    import urllib.request

    from test_live_cluster import _wait_up
    path = tmp_path / "serve.yaml"
    path.write_text((LIVE / "io-bound-1p1d.yaml").read_text().replace("decode_nodes: 1", "decode_nodes: 2")
                    .replace("model: live-tiny", f"model: {LIVE}/live-tiny").replace("hardware: live-host",
                                                                                      f"hardware: {LIVE}/live-host"))
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "serve", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        router, pids = _wait_up(proc)
        os.kill(pids["de1"], signal.SIGKILL)
        body = json.dumps({"prompt": list(range(1, 65)), "max_tokens": 2}).encode()
        outcomes = []
        for _ in range(3):  # the router serves on de0 (the first may meet de1 before a probe found it gone)
            req = urllib.request.Request(router + "/v1/completions", body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    assert json.loads(r.read())["dualpath"]["de"] == "de0"
                    outcomes.append("ok")
            except urllib.error.HTTPError as exc:
                msg = exc.read()
                assert exc.code == 502 and b"de1 died" in msg, msg
                outcomes.append(msg)
        # at most the request placed before the router knew: after it, every one is served (the same prompt:
        # fully stored after the first, so these also read a whole prompt on the DE side, nothing new)
        assert outcomes.count("ok") >= 2 and outcomes[-1] == "ok", outcomes
        assert proc.poll() is None  # still serving
        os.kill(pids["de0"], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1 and "de1 died" in err and "every de gone; stopping the cluster" in err, err[-2000:]
    assert gone(pids.values())
