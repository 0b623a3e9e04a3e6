"""What mmr adds to a round trip, against the kernel's own forwarding, same testbed, same run.

    MN (ping -6, 20 a second; blaster load) -- MMR (kernel | mmr run) -- AR2 -- CN

Three conditions, each for the kernel and then for mmr: idle (pings only), and pings while
MN's generator (bench/blaster.py, 64-byte UDP/IPv6 in bursts of 64) offers 50 % and 80 % of
the small-packet rate the kernel delivered at full speed.  CN drops the load at prerouting
with an nftables counter (its stack is not the bottleneck) and answers the pings.  Every
testbed link keeps the kernel's default offloads, in both columns.

Reported per condition: median, p99, p99.9 and max RTT, pings lost and duplicated, and the
load's loss; the distribution is drawn kernel vs mmr into latency.png (matplotlib).  The
gates compare with the kernel measured in the same run (ratios), with margins a shared
2-core machine still meets; the targets of the datapath issue are in bench/README.md.
MMR_BENCH_PINGS sets the pings per condition (default 200: 10 s each), MMR_BENCH_OUT the
directory of the plot and the raw RTTs (default: pytest's temporary directory).
"""
import json
import os
import re
import subprocess
import time

import numpy as np
import pytest

from engine.testbed import CN_ADDR
from load import blaster_argv, cn_count, counting_testbed
from netlab import running_router
from ratio import RESULTS, Figure

pytestmark = pytest.mark.privileged

PINGS = int(os.environ.get("MMR_BENCH_PINGS", "200"))
INTERVAL = 0.05                                   # 20 pings a second

# gates: ratios to the kernel in the same run (targets: +0.1 ms median idle, +0.5 ms p99
# idle, +2 ms p99 under load, no loss, no duplicates; bench/README.md has the figures)
GATE_MEDIAN_RATIO = 4.0
GATE_P99_RATIO_IDLE = 6.0
GATE_P99_RATIO_LOAD = 20.0
GATE_LOAD_LOSS = 0.01




def stats(rtts: list[float]) -> dict:
    a = np.sort(np.asarray(rtts, float))
    if not len(a):
        return {"n": 0}
    return {"n": len(a), "median": float(np.median(a)), "p99": float(np.percentile(a, 99)),
            "p999": float(np.percentile(a, 99.9)), "max": float(a[-1])}


def blaster(tb, seconds: float, pps: float):
    return subprocess.Popen(blaster_argv(tb, seconds, pps), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ping(tb, n: int) -> dict:
    p = subprocess.run(["ip", "netns", "exec", tb.ns("mn"), "ping", "-6", "-n", "-c", str(n), "-i", str(INTERVAL),
                        "-W", "2", CN_ADDR], capture_output=True, text=True, timeout=n * INTERVAL + 30)
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", p.stdout)]
    dups = p.stdout.count("DUP!")
    seqs = {int(x) for x in re.findall(r"icmp_seq=(\d+)", p.stdout)}
    return {"rtts": rtts, "dups": dups, "lost": n - len(seqs)}


def measure(tb, load_pps: float) -> dict:
    """Pings, with the generator offering load_pps meanwhile (0: none)."""
    load = None
    before = cn_count(tb)
    if load_pps:
        load = blaster(tb, PINGS * INTERVAL + 1.0, load_pps)
        time.sleep(0.5)
    res = ping(tb, PINGS)
    if load is not None:
        out, err = load.communicate(timeout=60)
        assert load.returncode == 0, err
        time.sleep(0.3)
        offered = json.loads(out)["offered"]
        res["load_offered"] = offered
        res["load_loss"] = 1 - (cn_count(tb) - before) / max(1, offered)
    res.update(stats(res["rtts"]))
    return res


def kernel_rate(tb) -> float:
    before = cn_count(tb)
    p = blaster(tb, 2.0, 0)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    time.sleep(0.3)
    return (cn_count(tb) - before) / json.loads(out)["seconds"]


@pytest.fixture(scope="module")
def bed():
    with counting_testbed("lat") as tb:
        yield tb


def fmt(s: dict) -> str:
    return (f"median {s['median']:.3f} ms, p99 {s['p99']:.3f}, p99.9 {s['p999']:.3f}, max {s['max']:.3f}; "
            f"lost {s['lost']}, dup {s['dups']}"
            + (f"; load loss {100 * s['load_loss']:.2f} %" if "load_loss" in s else ""))


def plot(results: dict, path: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    for ax, cond in zip(axes, results["kernel"]):
        for who, style in (("kernel", "-"), ("mmr", "--")):
            a = np.sort(results[who][cond]["rtts"])
            if len(a):
                ax.step(a, np.arange(1, len(a) + 1) / len(a), style, where="post",
                        label=f"{who} (median {np.median(a):.3f} ms)")
        ax.set_title(cond)
        ax.set_xlabel("round-trip time, ms")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("fraction of pings")
    fig.suptitle(f"ping MN -> CN across the MMR, {1 / INTERVAL:.0f}/s, {PINGS} per condition: "
                 f"kernel forwarding vs mmr run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def p99_gate(cond: str) -> float:
    return GATE_P99_RATIO_IDLE if cond == "idle" else GATE_P99_RATIO_LOAD


def test_latency_kernel_vs_mmr(bed, tmp_path):
    assert " 0% packet loss" in bed.run("mn", "ping", "-6", "-c", "2", "-i", "0.2", CN_ADDR)
    rate = kernel_rate(bed)
    conds = {"idle": 0.0, "50 % load": 0.5 * rate, "80 % load": 0.8 * rate}
    results = {"kernel": {c: measure(bed, pps) for c, pps in conds.items()}}
    retried = {}
    with running_router(bed):
        ping(bed, 5)                            # neighbours resolved, flows created
        results["mmr"] = {c: measure(bed, pps) for c, pps in conds.items()}
    # a shared machine stalls now and then for tens of ms, or runs slower for a minute (seen
    # in ~1 of 10 runs, under load only): a condition over its p99 gate is measured once
    # more, the kernel first and then mmr (the kernel as it runs in that same minute), both
    # pairs are reported, and the gate takes the second pair.  A real regression fails both.
    again = [c for c in conds if results["mmr"][c]["p99"] > p99_gate(c) * results["kernel"][c]["p99"]]
    if again:
        for c in again:
            retried[c] = (results["kernel"][c], results["mmr"][c])
            results["kernel"][c] = measure(bed, conds[c])
        with running_router(bed):
            ping(bed, 5)
            for c in again:
                results["mmr"][c] = measure(bed, conds[c])
    # the other end of the trade-off: no busy-poll (a wake-up per frame, no CPU when idle)
    from engine.config import default_config_path

    sleepy = tmp_path / "sleepy.toml"
    sleepy.write_text(open(default_config_path()).read().replace("[engine]\n", "[engine]\nbusy_poll_ms = 0\n", 1))
    with running_router(bed, "--config", str(sleepy)):
        ping(bed, 5)
        no_spin = measure(bed, 0.0)
    out = os.environ.get("MMR_BENCH_OUT") or str(tmp_path)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "latency.json"), "w") as f:
        json.dump({"pings": PINGS, "kernel_rate_pps": rate, "results": results, "busy_poll_0": no_spin}, f)
    plot(results, os.path.join(out, "latency.png"))
    RESULTS.append(Figure("latency: kernel small-packet rate (the 100 % of the loads)", f"{rate:,.0f} pps"))
    for c in conds:
        k, m = results["kernel"][c], results["mmr"][c]
        RESULTS.append(Figure(f"latency {c}: kernel", fmt(k)))
        if c in retried:
            RESULTS.append(Figure(f"latency {c}: first run over the gate, measured again: kernel",
                                  fmt(retried[c][0])))
            RESULTS.append(Figure(f"latency {c}: first run over the gate, measured again: mmr",
                                  fmt(retried[c][1])))
        RESULTS.append(Figure(f"latency {c}: mmr", fmt(m) + f"; added median {m['median'] - k['median']:+.3f} ms, "
                                                          f"added p99 {m['p99'] - k['p99']:+.3f} ms"))
    k = results["kernel"]["idle"]
    RESULTS.append(Figure("latency idle: mmr with busy_poll_ms = 0", fmt(no_spin) +
                          f"; added median {no_spin['median'] - k['median']:+.3f} ms"))
    RESULTS.append(Figure("latency plot", os.path.join(out, "latency.png")))
    for c in conds:
        k, m = results["kernel"][c], results["mmr"][c]
        assert m["dups"] == 0, (c, m["dups"])                 # never a duplicate
        assert m["lost"] <= max(1, k["lost"]), (c, m["lost"], k["lost"])
        assert m["p99"] <= p99_gate(c) * k["p99"], (c, k["p99"], m["p99"], [r["p99"] for r in retried.get(c, ())])
        if c == "idle":
            assert m["median"] <= GATE_MEDIAN_RATIO * k["median"], (k["median"], m["median"])
        else:
            assert m["load_loss"] <= GATE_LOAD_LOSS, (c, m["load_loss"])
