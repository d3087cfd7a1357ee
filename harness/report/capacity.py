"""A `dualpath run --capacity` search in the report: each system's capacity in words, and TTFT and TPOT
against the agent rate with the SLO lines (the paper's Fig. 10-11), from the probes in summary.json."""
from __future__ import annotations

import pandas as pd


def probes(run) -> pd.DataFrame:
    """One row per probe: label, system, rate_aps, ttft_s, tpot_s, passed (the last run of a rate)."""
    rows = [{"label": run.capacity_labels[s], "system": s, **p}
            for s, r in (run.capacity or {}).items() for p in r.get("probes") or []]
    df = pd.DataFrame(rows, columns=["label", "system", "rate_aps", "ttft_s", "tpot_s", "passed", "reason"]
                      if not rows else None)
    if "ttft_last_window_s" not in df:
        df["ttft_last_window_s"] = float("nan")
    if len(df):
        df = df.drop_duplicates(["label", "rate_aps"], keep="last").sort_values(["label", "rate_aps"])
    return df


def capacity_lines(run) -> list[str]:
    if run.capacity is None:
        return []
    slo = run.summary.get("meta", {}).get("scenario", {}).get("slo") or {}
    targets = " and ".join(f"{name} <= {slo[k]:g} s" for k, name in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"))
                           if slo.get(k))
    df = probes(run)
    out = []
    for s, label in run.capacity_labels.items():
        cap = run.capacity[s].get("capacity_aps")
        mine = df[df["system"] == s] if len(df) else df
        above = mine[(~mine["passed"].astype(bool)) & (mine["rate_aps"] > (cap or 0))] if len(mine) else mine
        stop = f"; the next probe ({above['rate_aps'].iloc[0]:g} agents/s) failed: {above['reason'].iloc[0]}" \
            if len(above) else ""
        out.append(f"- **{label}**: capacity {cap:.3g} agents/s within {targets or 'the SLO'}{stop}" if cap
                   else f"- **{label}**: no probed rate met {targets or 'the SLO'}{stop}")
    for pair, ratio in (run.summary.get("capacity_ratio") or {}).items():
        out.append(f"- capacity {pair}: {ratio:.2f}x")
    return out


def capacity_figure(runs, colours, key: str, name: str, paper: str):
    from harness.report.figures import _plt
    plt, _ = _plt()
    frames = [probes(r) for r in runs if r.capacity is not None]
    frames = [f for f in frames if len(f)]
    if not frames:
        return None
    df = pd.concat(frames)
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, g in df.groupby("label", sort=False):
        g = g[g[key].notna()]
        ax.plot(g["rate_aps"], g[key], "-", color=colours[label], label=label, lw=1.3)
        ok = g["passed"].astype(bool)
        ax.scatter(g["rate_aps"][ok], g[key][ok], color=colours[label], marker="o", zorder=3)
        ax.scatter(g["rate_aps"][~ok], g[key][~ok], color=colours[label], marker="x", zorder=3)
        last = g[g["ttft_last_window_s"].notna()] if key == "ttft_s" else g.iloc[:0]
        if len(last):  # the paper's stop rule judges the last window: a rising TTFT fails below the SLO mean
            ax.plot(last["rate_aps"], last["ttft_last_window_s"], ":", color=colours[label], lw=1.2,
                    label=f"{label}, last window")
    slo = next((r.summary["meta"]["scenario"].get("slo") or {} for r in runs if r.capacity is not None), {})
    if slo.get(key):
        ax.axhline(slo[key], color="black", ls="--", lw=1, label=f"SLO {slo[key]:g} s")
    if key == "ttft_s":
        from matplotlib.ticker import ScalarFormatter
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="y", which="both", labelsize=8)
    ax.set(xlabel="agent arrival rate (agents/s)", ylabel=f"mean {name} (s{', log scale' if key == 'ttft_s' else ''})",
           title=f"{name} against agent rate (paper {paper}); o within the SLO, x not")
    ax.legend(fontsize=8)
    return fig


def ttft_vs_rate(runs, colours):
    return capacity_figure(runs, colours, "ttft_s", "TTFT", "Fig. 10")


def tpot_vs_rate(runs, colours):
    return capacity_figure(runs, colours, "tpot_s", "TPOT", "Fig. 11")
