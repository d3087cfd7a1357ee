"""harness.results: the incremental, crash-safe results directory."""
from __future__ import annotations

import datetime as dt
import gc
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hdrh.log import HistogramLogReader

from harness import metrics
from harness.results import (CONTRACT, TABLES, ResultsWriter, contract_schema, load_results, new_run_dir,
                             stream_segments, to_table)
from traces.errors import InputError

SCENARIO = {"name": "unit", "backend": "sim", "seed": 7, "systems": ["basic", "dualpath"],
            "slo": {"ttft_s": 2.0}, "telemetry": {"window_s": 1.0}}
REPO = Path(__file__).resolve().parents[1]


def request_batch(n: int, start: int = 0, **extra) -> dict:
    i = np.arange(start, start + n)
    batch = {
        "agent_id": [f"a{k % 3}" for k in i], "round": i // 3,
        "t_scheduled": i * 0.5, "t_sent": i * 0.5, "t_first_token": i * 0.5 + 1.0, "t_second_token": i * 0.5 + 1.1,
        "t_done": i * 0.5 + 2.0, "prompt_tokens": np.full(n, 1000), "expected_cached_tokens": np.full(n, 900),
        "cached_tokens": [900] * n, "output_tokens": np.full(n, 11), "pe": ["pe0"] * n, "de": [None] * n,
        "read_side": ["pe"] * n, "read_bytes": np.full(n, 4096), "queue_s": np.full(n, 0.1), "alloc_s": np.zeros(n),
        "read_s": np.full(n, 0.2), "prefill_s": np.full(n, 0.7), "kv_transfer_s": np.full(n, np.nan),
        "status": ["ok"] * n, "error": [None] * n,
    }
    batch.update(extra)
    return batch


def agent_batch(n: int = 3) -> dict:
    return {"agent_id": [f"a{k}" for k in range(n)], "t_arrival": [0.0] * n, "t_done": [9.0] * n,
            "rounds": [4] * n, "jct_s": [9.0] * n, "status": ["ok"] * n}


def link_batch() -> dict:
    return {"t_start": [0.0, 0.0], "t_end": [1.0, 1.0], "node": [0, 1], "link": ["snic", "cnic3"],
            "direction": ["rx", "tx"], "bytes": [10, 20], "traffic": ["kv_read", "kv_transfer"]}


def engine_batch() -> dict:
    return {"t": [0.0, 0.0], "engine": ["pe0", "pe1"], "role": ["prefill", "prefill"], "batch_requests": [1, 2],
            "batch_tokens": [100, 200], "attention_s": [0.1, 0.3], "step_s": [0.5, 0.5], "queued_tokens": [0, 0],
            "read_queue_tokens": [5, 6]}


def test_close_writes_parquet_with_exactly_the_contract_columns_and_types(tmp_path):
    w = ResultsWriter(tmp_path / "run", SCENARIO)
    w.begin_system("basic")
    w.requests(request_batch(4))
    w.agents(agent_batch())
    w.links(link_batch())
    w.engines(engine_batch())
    w.end_system()
    w.begin_system("dualpath")
    w.requests(request_batch(2))
    w.end_system()
    w.close()
    run = tmp_path / "run"
    for name in TABLES:
        assert pq.read_schema(run / f"{name}.parquet").remove_metadata() == contract_schema(name), name
        assert not stream_segments(run, name)
    res = load_results(run)
    assert list(res["requests"]["system"]) == ["basic"] * 4 + ["dualpath"] * 2
    assert str(res["requests"]["round"].dtype) == "int64" and str(res["links"]["bytes"].dtype) == "int64"
    assert list(res["links"]["node"]) == ["0", "1"]  # integer ids stored as the contract's strings
    assert res["requests"]["de"].isna().all() and np.isnan(res["requests"]["kv_transfer_s"]).all()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and list(summary["systems"]) == ["basic", "dualpath"]
    assert summary["systems"]["basic"]["counts"]["requests"]["ok"] == 4
    assert summary["systems"]["basic"]["attention_balance"] == pytest.approx(1.5)
    assert summary["meta"]["scenario"] == SCENARIO and summary["meta"]["seed"] == 7
    assert summary["meta"]["versions"]["pyarrow"] == pa.__version__
    assert yaml.safe_load((run / "scenario.yaml").read_text()) == SCENARIO


def test_omitted_optional_columns_are_filled_and_extra_columns_are_kept(tmp_path):
    batch = request_batch(3)
    for name in ("t_second_token", "cached_tokens", "pe", "de", "error", "queue_s"):
        del batch[name]
    with ResultsWriter(tmp_path / "run", SCENARIO) as w:
        w.begin_system("basic")
        w.requests({**batch, "itl_s": [[0.01, 0.02]] * 3})
        w.requests(request_batch(2, start=3))  # no itl_s: nulls in the same stream
        w.requests(request_batch(1, start=5, worker=["w1"]))  # a new column: a new stream segment
        assert len(stream_segments(tmp_path / "run", "requests")) == 2
        s = w.end_system()
    assert s["latency"]["itl_s"]["count"] == 6
    res = load_results(tmp_path / "run")["requests"]
    assert list(res.columns) == list(CONTRACT["requests"]) + ["worker"]  # itl_s is a contract column
    assert res["cached_tokens"].isna().sum() == 3 and np.isnan(res["t_second_token"][:3]).all()
    assert list(res["worker"].isna()) == [True] * 5 + [False]


def _write_partial_run(run_dir: Path, batches: int) -> ResultsWriter:
    w = ResultsWriter(run_dir, SCENARIO)
    w.begin_system("basic")
    for k in range(batches):
        w.requests(request_batch(5, start=5 * k))
    w.agents(agent_batch())
    return w


def test_a_process_killed_mid_run_keeps_every_complete_batch(tmp_path):
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_results import _write_partial_run
        from pathlib import Path
        _write_partial_run(Path({str(run)!r}), 3)
        os._exit(9)  # no close, no atexit, no finalizers
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    assert not (run / "requests.parquet").exists()
    res = load_results(run)
    assert len(res["requests"]) == 15 and list(res["requests"]["round"]) == list(np.arange(15) // 3)
    assert len(res["agents"]) == 3 and len(res["links"]) == 0
    assert res["summary"]["status"] == "running"


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # the dropped writer's open streams, on purpose
def test_a_dropped_writer_and_a_torn_last_batch_still_load(tmp_path):
    run = tmp_path / "run"
    w = _write_partial_run(run, 2)
    del w
    gc.collect()
    stream = run / "requests.arrows"
    whole = stream.read_bytes()
    torn = to_table("requests", request_batch(5, start=10), "basic").to_batches()[0].serialize()
    with open(stream, "ab") as fh:  # a third batch cut short by the crash
        fh.write(torn.to_pybytes()[: torn.size // 2])
    assert stream.stat().st_size > len(whole)
    assert len(load_results(run)["requests"]) == 10


def test_context_manager_closes_as_interrupted_with_what_was_measured(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        with ResultsWriter(run, SCENARIO) as w:
            w.begin_system("basic")
            w.requests(request_batch(4))
            w.end_system()
            w.begin_system("dualpath")
            w.requests(request_batch(2))
            raise KeyboardInterrupt
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["meta"]["error"] == "KeyboardInterrupt"
    assert summary["systems"]["basic"]["complete"] is True
    assert summary["systems"]["dualpath"]["complete"] is False
    assert summary["systems"]["dualpath"]["counts"]["requests"]["total"] == 2
    assert len(pq.read_table(run / "requests.parquet")) == 6


def test_exception_inside_the_block_is_recorded_and_reraised(tmp_path):
    with pytest.raises(RuntimeError, match="backend died"):
        with ResultsWriter(tmp_path / "run", SCENARIO) as w:
            w.begin_system("basic")
            raise RuntimeError("backend died")
    summary = load_results(tmp_path / "run")["summary"]
    assert summary["status"] == "interrupted" and "backend died" in summary["meta"]["error"]


@pytest.mark.parametrize("table, change, message", [
    ("requests", {"status": ["ok", "done"]}, "requests.status: 'done' is not one of"),
    ("requests", {"read_side": ["pe", "storage"]}, "requests.read_side"),
    ("requests", {"round": [0.0, 1.5]}, "requests.round: cannot convert"),
    ("requests", {"prompt_tokens": [1, None]}, "requests.prompt_tokens: null values"),
    ("requests", {"system": ["basic", "oracle"]}, "requests.system: rows of another system"),
    ("requests", {"output_tokens": [1]}, "column output_tokens has 1 rows, others 2"),
    ("requests", {"t_sent": None}, "missing column(s) t_sent"),
    ("links", {"link": ["snic", "NIC 0"]}, "links.link: 'NIC 0'"),  # our links or device names, lower case
    ("links", {"direction": ["rx", "up"]}, "links.direction"),
    ("engines", {"role": ["prefill", "pe"]}, "engines.role"),
])
def test_batches_that_break_the_contract_are_refused(tmp_path, table, change, message):
    batch = {"requests": request_batch(2), "links": link_batch(), "engines": engine_batch()}[table]
    for key, value in change.items():
        if value is None:
            del batch[key]
        else:
            batch[key] = value
    w = ResultsWriter(tmp_path / "run", SCENARIO)
    w.begin_system("basic")
    with pytest.raises(ValueError) as err:
        getattr(w, table)(batch)
    assert message in str(err.value)
    w.close()
    assert len(load_results(tmp_path / "run")[table]) == 0  # nothing of a refused batch was written


def test_api_misuse_is_refused(tmp_path):
    w = ResultsWriter(tmp_path / "run", SCENARIO)
    with pytest.raises(RuntimeError, match="begin_system"):
        w.requests(request_batch(1))
    w.begin_system("basic")
    with pytest.raises(RuntimeError, match="end_system"):
        w.begin_system("dualpath")
    with pytest.raises(ValueError, match="computed summary key"):
        w.end_system({"latency": 1})
    w.close()
    assert w.close()["status"] == "ok"  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        w.begin_system("x")
    with pytest.raises(InputError, match="already holds a run"):
        ResultsWriter(tmp_path / "run", SCENARIO)


def test_end_system_extra_is_merged_into_the_summary(tmp_path):
    with ResultsWriter(tmp_path / "run", SCENARIO) as w:
        w.begin_system("basic")
        w.requests(request_batch(3))
        s = w.end_system({"sim_events": 123})
    assert s["sim_events"] == 123 and s["system"] == "basic" and s["complete"] is True
    assert load_results(tmp_path / "run")["summary"]["systems"]["basic"]["sim_events"] == 123


def test_latency_hlog_holds_ttft_intervals_tagged_by_system(tmp_path):
    with ResultsWriter(tmp_path / "run", SCENARIO) as w:
        for system, n in (("basic", 6), ("dualpath", 3)):
            w.begin_system(system)
            w.requests(request_batch(n))  # TTFT 1 s each, first tokens at 1.0, 1.5, 2.0, ...: 2 per 1 s window
            w.end_system()
    text = (tmp_path / "run" / "latency.hlog").read_text()
    assert "#[StartTime: " in text and "#[Histogram log format version 1.2]" in text
    reader = HistogramLogReader(str(tmp_path / "run" / "latency.hlog"), metrics.new_histogram())
    seen = []
    while (hist := reader.get_next_interval_histogram()) is not None:
        start_s = hist.get_start_time_stamp() / 1000 - reader.get_start_time_sec()
        seen.append((hist.get_tag(), round(start_s, 3), hist.get_total_count(), hist.get_max_value()))
    reader.close()
    assert [row[:3] for row in seen] == [("basic", 1.0, 2), ("basic", 2.0, 2), ("basic", 3.0, 2),
                                         ("dualpath", 1.0, 2), ("dualpath", 2.0, 1)]
    assert all(1_000_000 <= row[3] <= 1_001_000 for row in seen)  # 1 s in microseconds, HDR resolution


def test_new_run_dir_names_and_suffixes(tmp_path):
    now = dt.datetime(2026, 2, 25, 13, 4, 5)
    first = new_run_dir(tmp_path, "offline", now=now)
    second = new_run_dir(tmp_path, "offline", now=now)
    assert first.name == "offline-20260225-130405" and second.name == "offline-20260225-130405-2"
    assert first.is_dir() and second.is_dir()


def test_load_results_of_a_missing_directory_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such results directory"):
        load_results(tmp_path / "nope")


def test_load_results_of_a_run_without_records_gives_typed_empty_tables(tmp_path):
    ResultsWriter(tmp_path / "run", SCENARIO).close()
    res = load_results(tmp_path / "run")
    for name in TABLES:
        assert list(res[name].columns) == list(CONTRACT[name]) and len(res[name]) == 0
    assert str(res["engines"]["batch_tokens"].dtype) == "int64"
