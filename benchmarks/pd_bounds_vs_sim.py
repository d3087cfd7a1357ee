"""The simulator at several P:D ratios next to what `dualpath bounds` says for each.

    .venv/bin/python benchmarks/pd_bounds_vs_sim.py [--pd 1:8,2:4,8:1] [--agents 1024] [--model deepseek-27b]
        [--hardware hopper-paper] [-o DIR]

Runs scenarios/paper/offline-ds660b-64k.yaml (basic, dualpath, oracle) with the cluster and model set
(DS 660B's weights do not fit a one-node expert-parallel group of 80 GB GPUs, so 1P8D and 8P1D need a
smaller model: DS 27B by default) into DIR/<P>p<D>d/ (a finished one is read, not rerun), and prints,
per ratio: JCT per system, basic/dualpath, the eq. 9 verdict at line rates and at the simulator's link
rates (`bounds --sim-rates`), the loads eq. 9 predicts with every SNIC reading at full rate, and the
link loads measured from links.parquet (share of line rate, p90 over telemetry windows), and eq. 9's
traffic model fed with the storage reads each run measured next to the loads it measured (means over
the run: a check that the simulator moves the bytes the paper's analysis counts).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engines.costmodel import SimConstants, hardware_spec
from harness.bounds import link_loads, parse_pd, pd_bounds
from harness.cli import main as dualpath
from harness.compare import link_utilisation
from harness.results import load_results

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "paper" / "offline-ds660b-64k.yaml"
# eq. 9's constraints and the measured link class each one is about
MEASURED = {"PE CNIC write": "prefill cnic rx", "PE CNIC read": "prefill cnic tx", "DE CNIC read": "decode cnic tx",
            "DE CNIC write": "decode cnic rx", "PE DRAM": "prefill dram", "DE DRAM": "decode dram"}


def run(out: Path, p: int, d: int, agents: int, model: str, hardware: str) -> dict:
    done = out / "summary.json"
    if not (done.exists() and json.loads(done.read_text()).get("status") == "ok"):
        rc = dualpath(["run", str(SCENARIO), "-o", str(out), "--set", f"cluster.prefill_nodes={p}",
                       "--set", f"cluster.decode_nodes={d}", "--set", f"trace.synth.agents={agents}",
                       "--set", f"model={model}", "--set", f"hardware={hardware}",
                       "--set", "systems=[basic,dualpath,oracle]"])
        if rc != 0:
            raise SystemExit(f"{p}P{d}D: dualpath run failed with exit code {rc}")
    return load_results(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pd", default="1:8,2:4,8:1")
    ap.add_argument("--agents", type=int, default=1024)
    ap.add_argument("--model", default="deepseek-27b")
    ap.add_argument("--hardware", default="hopper-paper")
    ap.add_argument("-o", "--output", default=str(ROOT / "results" / "pd-bounds-vs-sim"))
    args = ap.parse_args()
    hw = hardware_spec(args.hardware)
    k = SimConstants()
    line, sim = pd_bounds(hw), pd_bounds(hw, k.cnic_efficiency, k.snic_efficiency)
    print(f"{hw.name}, {args.model}, {args.agents} agents; eq. 9 at line rates {line.lower} .. {line.upper}, "
          f"at the simulator's rates {float(sim.lower):.3g} .. {float(sim.upper):.3g}")
    for text in args.pd.split(","):
        p, d = parse_pd(text)
        results = run(Path(args.output) / f"{p}p{d}d", p, d, args.agents, args.model, args.hardware)
        systems = results["summary"]["systems"]
        jct = {name: s["makespan_jct_s"] for name, s in systems.items()}
        v_line, v_sim = line.verdict(p, d), sim.verdict(p, d)
        print(f"\n{p}P{d}D (P/D = {v_line['ratio']}): JCT " + ", ".join(f"{n} {j:,.0f} s" for n, j in jct.items())
              + f"; basic/dualpath {jct['basic'] / jct['dualpath']:.2f}, dualpath/oracle {jct['dualpath'] / jct['oracle']:.2f}")
        print(f"  eq. 9: {'inside' if v_line['inside'] else 'OUTSIDE'} at line rates"
              f"{' (over: ' + ', '.join(v_line['over_line_rate']) + ')' if v_line['over_line_rate'] else ''}; "
              f"{'inside' if v_sim['inside'] else 'OUTSIDE'} at the simulator's rates"
              f"{' (over: ' + ', '.join(v_sim['over_line_rate']) + ')' if v_sim['over_line_rate'] else ''}")
        nodes = {"prefill": p, "decode": d}
        for name, s in systems.items():
            links = results["links"][results["links"]["system"] == name]
            util = link_utilisation(links, hw, nodes, s["duration_s"])
            if not util:
                continue
            top = sorted(util.items(), key=lambda kv: -kv[1]["p90"])[:4]
            print(f"  {name:<9} measured p90 (mean): " + ", ".join(f"{c} {u['p90']:.0%} ({u['mean']:.0%})" for c, u in top))
            if name != "oracle":
                # eq. 9's traffic model fed with the storage reads this run measured (means)
                pe_read = util.get("prefill snic rx", {}).get("mean", 0.0) * hw.snic_bytes_s
                de_read = util.get("decode snic rx", {}).get("mean", 0.0) * hw.snic_bytes_s
                pred = link_loads(p, d, hw.gpus_per_node, pe_read, de_read, hw.cnic_bytes_s, hw.dram_bw_bytes_s)
                print(f"    {name}: eq. 9's traffic from its measured reads / measured (means): " + ", ".join(
                    f"{n} {x:.1%}/{util.get(MEASURED[n], {}).get('mean', 0):.1%}" for n, x in pred.items()))
    print(f"\nresults: {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
