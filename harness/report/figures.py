"""The report's figures (seaborn), each in the form of the paper's figure it copies, one colour per system.

Every function takes the report's `Run`s (harness/report/__init__.py) and the colour of each label, draws
one figure and returns it (or None when the runs hold nothing to draw). matplotlib and seaborn are
imported here only, when a report is made.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from harness import attribution, metrics

BREAKDOWN = ("queue_s", "alloc_s", "read_s", "prefill_s")


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    sns.set_theme(style="whitegrid", context="notebook")
    return plt, sns


def _series(runs):
    """(label, system, run) for every system of every run, in order."""
    return [(label, system, run) for run in runs for system, label in run.labels.items()]


def _pick(df, system):
    return df[df["system"].astype(str) == system] if df is not None and len(df) else None


def jct_bars(runs, colours):
    plt, sns = _plt()
    rows = [(label, run.summary["systems"][s].get("makespan_jct_s")) for label, s, run in _series(runs)]
    rows = [(k, v) for k, v in rows if v]
    if not rows:
        return None
    df = pd.DataFrame(rows, columns=["system", "jct"])
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(df) + 2), 4))
    sns.barplot(df, x="system", y="jct", hue="system", palette=colours, legend=False, ax=ax)
    for p, v in zip(ax.patches, df["jct"]):
        ax.annotate(f"{v:.0f}", (p.get_x() + p.get_width() / 2, p.get_height()), ha="center", va="bottom")
    ax.set(xlabel="", ylabel="job completion time (s)", title="JCT per system (paper Fig. 7)")
    return fig


def waterfall(runs, colours):
    plt, _ = _plt()
    series = [(label, s, run) for label, s, run in _series(runs) if s in attribution.LADDER]
    series.sort(key=lambda x: attribution.LADDER.index(x[1]))
    if len(series) < 2:
        return None
    jct = [run.summary["systems"][s]["makespan_jct_s"] for _, s, run in series]
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(series) + 2), 4))
    for i, ((label, _, _), v) in enumerate(zip(series, jct)):
        bottom = 0 if i == 0 else min(v, jct[i - 1])
        height = v if i == 0 else abs(jct[i - 1] - v)
        ax.bar(i, height, bottom=bottom, color=colours[label])
        text = f"{v:.0f} s" if i == 0 else f"{v:.0f} s\n{v - jct[i - 1]:+.0f} s, {jct[i - 1] / v:.2f}x"
        ax.text(i, bottom + height, text, ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(series)), [x[0] for x in series])
    ax.set_ylim(0, max(jct) * 1.15)
    ax.set(ylabel="job completion time (s)", title="What each rung of the ablation ladder buys (paper Fig. 12)")
    return fig


def ttft_breakdown(runs, colours):
    plt, _ = _plt()
    rows = []
    for label, s, run in _series(runs):
        b = run.summary["systems"][s].get("ttft_breakdown_mean_s") or {}
        rows.append([label] + [b.get(k) or 0.0 for k in BREAKDOWN])
    df = pd.DataFrame(rows, columns=["system", *BREAKDOWN]).set_index("system")
    if not df.to_numpy().any():
        return None
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(df) + 3), 4))
    df.plot.bar(stacked=True, ax=ax, color=["#9e9e9e", "#d62728", "#1f77b4", "#2ca02c"], rot=0)
    ax.set(xlabel="", ylabel="mean TTFT (s)", title="TTFT breakdown (paper Fig. 12)")
    ax.legend(title="part", bbox_to_anchor=(1.01, 1), loc="upper left")
    return fig


def _over_time(runs, colours, per_label, ylabel, title, style_names=("max", "avg")):
    plt, _ = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    drew = False
    for label, s, run in _series(runs):
        df = per_label(run, s)
        if df is None or not len(df):
            continue
        drew = True
        for col, ls in zip(style_names, ("-", "--")):
            ax.plot(df["t"], df[col], ls, color=colours[label], label=f"{label} {col}", lw=1.3)
    if not drew:
        plt.close(fig)
        return None
    ax.set(xlabel="time (s)", ylabel=ylabel, title=title)
    ax.legend(fontsize=8, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    return fig


def snic_over_time(runs, colours):
    def per(run, s):
        links = _pick(run.links, s)
        if links is None:
            return None
        rx = links[(links["link"] == "snic") & (links["direction"] == "rx")]
        if not len(rx):
            return None
        w = (rx["t_end"] - rx["t_start"]).max()
        nodes = sorted(links["node"].astype(str).unique())  # every node's SNIC, idle ones too (as snic_balance)
        g = (rx.assign(node=rx["node"].astype(str)).groupby(["t_start", "node"])["bytes"].sum()
             .unstack(fill_value=0).reindex(columns=nodes, fill_value=0) / w / 1e9)
        return pd.DataFrame({"t": g.index, "max": g.max(axis=1).to_numpy(), "avg": g.mean(axis=1).to_numpy()})
    return _over_time(runs, colours, per, "storage NIC read rate (GB/s)",
                      "Storage NIC reads per node, max and avg over all nodes per window (paper Fig. 13)")


def attention_over_time(runs, colours):
    def per(run, s):
        eng = _pick(run.engines, s)
        if eng is None:
            return None
        pre = eng[(eng["role"] == "prefill") & eng["attention_s"].notna()]
        if not len(pre):
            return None
        keys = ["t", "group"] if "group" in pre else ["t"]
        step = pre.groupby(keys)["attention_s"].agg(["max", "mean", "count"]).reset_index()
        step = step[(step["count"] >= 2) & (step["mean"] > 0)]  # as metrics.attention_balance_per_step
        if not len(step):
            return None
        w = run.window_s
        g = step.groupby((step["t"] // w) * w)[["max", "mean"]].mean() * 1e3
        return pd.DataFrame({"t": g.index, "max": g["max"].to_numpy(), "avg": g["mean"].to_numpy()})
    fig = _over_time(runs, colours, per, "attention time per prefill step (ms, log scale)",
                     "Prefill attention per step, max and avg across the group's GPUs (paper Fig. 14)")
    if fig is not None:
        fig.axes[0].set_yscale("log")  # an imbalanced early phase spans decades above a balanced one
    return fig


def load_over_time(runs, colours):
    if not _series(runs):
        return None
    plt, _ = _plt()
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for label, s, run in _series(runs):
        agents, req = _pick(run.agents, s), _pick(run.requests, s)
        if agents is not None:
            t = np.r_[agents["t_arrival"], agents["t_done"].dropna()]
            d = np.r_[np.ones(len(agents)), -np.ones(agents["t_done"].notna().sum())]
            o = np.lexsort((d, t))
            a1.step(t[o], np.cumsum(d[o]), where="post", color=colours[label], label=label)
        if req is not None:
            ok = metrics.ok_requests(req)
            w = run.window_s
            b = (ok["t_first_token"] // w) * w
            tps = ok.groupby(b)["prompt_tokens"].sum() / w
            a2.plot(tps.index, tps.to_numpy() / 1e3, color=colours[label], label=label)
    a1.set(ylabel="running agents", title="Load over time (paper Fig. 15)")
    a2.set(xlabel="time (s)", ylabel="prompt tokens/s (thousands)")
    a1.legend(fontsize=8)
    return fig


def link_heatmap(runs, colours):
    plt, sns = _plt()
    from matplotlib.ticker import MaxNLocator
    series = [x for x in _series(runs) if _pick(x[2].links, x[1]) is not None and len(_pick(x[2].links, x[1]))]
    if not series:
        return None
    kinds = ("snic", "cnic", "dram")
    fig, axes = plt.subplots(len(series), 3, figsize=(13, 2.2 + 1.9 * len(series)), squeeze=False)
    for r, (label, s, run) in enumerate(series):
        links = _pick(run.links, s)
        caps = attribution.capacities(run.summary["meta"]["scenario"])
        for c, kind in enumerate(kinds):
            ax = axes[r][c]
            if links is None:
                ax.axis("off")
                continue
            sub = links[links["link"].astype(str).str.startswith(kind)]
            w = float((links["t_end"] - links["t_start"]).max())
            if kind == "dram":
                per = sub.groupby(["node", "t_start"])["bytes"].sum() / (caps["dram"] * w)
            else:  # a link's busier direction, averaged over the node's links of this kind
                per = (sub.groupby(["node", "link", "t_start", "direction"])["bytes"].sum()
                       .groupby(level=[0, 1, 2]).max().groupby(level=[0, 2]).mean() / (caps[kind] * w))
            grid = per.unstack(fill_value=0) * 100 if len(per) else pd.DataFrame()
            if grid.empty:
                ax.axis("off")
                continue
            nbins = min(grid.shape[1], 60)  # at most 60 time columns: windows averaged into bins
            cols = np.array_split(np.arange(grid.shape[1]), nbins)
            binned = pd.DataFrame({i: grid.iloc[:, c_].mean(axis=1) for i, c_ in enumerate(cols)})
            sns.heatmap(binned, ax=ax, vmin=0, vmax=100, cmap="rocket_r", cbar=c == 2,
                        cbar_kws={"label": "busy (%)"} if c == 2 else None, xticklabels=False)
            starts = np.array([float(grid.columns[c_[0]]) for c_ in cols])
            t_end = float(grid.columns[-1]) + w
            edges = np.r_[starts, t_end]
            nice = [t for t in MaxNLocator(5).tick_values(0, t_end) if edges[0] <= t <= t_end]
            ax.set_xticks(np.interp(nice, edges, np.arange(len(edges))), [f"{t:g}" for t in nice], rotation=0)
            ax.set(xlabel="time (s)", ylabel=f"{label}\nnode" if c == 0 else "",
                   title=f"{kind} busy (%)" if r == 0 else "")
    fig.suptitle("Per-node link utilisation")
    fig.tight_layout()
    return fig


def utilisation_bars(runs, colours):
    plt, sns = _plt()
    keys = attribution.RATE_RESOURCES + attribution.CAPACITY_RESOURCES
    rows = []
    for label, s, run in _series(runs):
        u = run.attribution[s].get("utilisation") or {}
        rows += [(label, k, 100 * u[k]) for k in keys if k in u]
    if not rows:
        return None
    df = pd.DataFrame(rows, columns=["system", "resource", "busy"])
    order = [k for k in keys if k in set(df["resource"])]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    sns.barplot(df, x="resource", y="busy", hue="system", order=order, palette=colours, ax=ax)
    labels = list(dict.fromkeys(df["system"]))
    for container, label in zip(ax.containers, labels):
        s, run = next((s, run) for lb, s, run in _series(runs) if lb == label)
        top = run.attribution[s]["bottleneck"].get("resource")
        if top not in order:
            continue
        bar = container.patches[order.index(top)]
        bar.set_edgecolor("black")
        bar.set_linewidth(2)
        ax.annotate("\u25bc", (bar.get_x() + bar.get_width() / 2, bar.get_height() + 1), ha="center",
                    va="bottom", fontsize=10)
    n_rate = sum(1 for k in order if k in attribution.RATE_RESOURCES)
    if 0 < n_rate < len(order):
        ax.axvline(n_rate - 0.5, color="grey", lw=1, ls="--")
        ax.text(n_rate - 0.45, 108, "capacity: mean occupancy \u2192", fontsize=8, va="center")
    ax.set(xlabel="", ylabel="busy / occupied in the busy phase (%)", ylim=(0, 115),
           title="Utilisation per resource (bottleneck outlined and marked \u25bc)")
    ax.legend(fontsize=8)
    return fig


def latency_cdfs(runs, colours):
    if not _series(runs):
        return None
    plt, _ = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, s, run in _series(runs):
        lat = metrics.request_latencies(_pick(run.all_requests if run.all_requests is not None else run.requests, s))
        for ax, key in zip(axes, ("ttft_s", "tpot_s")):
            v = np.sort(lat[key][np.isfinite(lat[key])])
            if len(v):
                ax.plot(v, np.arange(1, len(v) + 1) / len(v), color=colours[label], label=label)
    slo = (runs[0].summary["meta"]["scenario"].get("slo") or {})
    for ax, key, name in zip(axes, ("ttft_s", "tpot_s"), ("TTFT", "TPOT")):
        if slo.get(key):
            ax.axvline(slo[key], color="black", ls=":", lw=1, label=f"SLO {slo[key]:g} s")
        log = key == "ttft_s"  # TTFT spans decades; TPOT a narrow band
        ax.set(xscale="log" if log else "linear", xlabel=f"{name} (s{', log scale' if log else ''})",
               ylabel="share of requests", title=f"{name} CDF")
        ax.legend(fontsize=8)
    return fig


FIGURES = {"jct": jct_bars, "ablation_waterfall": waterfall, "ttft_breakdown": ttft_breakdown,
           "snic_over_time": snic_over_time, "attention_over_time": attention_over_time,
           "load_over_time": load_over_time, "link_heatmap": link_heatmap, "utilisation": utilisation_bars,
           "latency_cdf": latency_cdfs}


def _capacity_figures():
    from harness.report.capacity import tpot_vs_rate, ttft_vs_rate
    return {"capacity_ttft": ttft_vs_rate, "capacity_tpot": tpot_vs_rate}


def palette(labels):
    _, sns = _plt()
    return dict(zip(labels, sns.color_palette("tab10", max(len(labels), 1))))


def draw_all(runs, directory):
    """Write figures/NAME.png for each figure with something to draw; returns {name: path}."""
    plt, _ = _plt()
    labels = [label for label, _, _ in _series(runs)]
    labels += [label for run in runs for label in run.capacity_labels.values() if label not in labels]
    colours = palette(labels)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, draw in {**FIGURES, **_capacity_figures()}.items():
        fig = draw(runs, colours)
        if fig is None:
            continue
        path = directory / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        out[name] = path
    return out
