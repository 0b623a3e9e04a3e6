"""A flood of malformed frames from the LAN on a freshly started router (40,000 a second for
30 s): no uplink is taken down (probe replies are read and timed by the kernel's receive
stamps, however busy the engine is), every bad frame is dropped and counted by reason, the
engine's memory stays flat, and pings across the router keep crossing; their p99 is
reported with and without the flood (bench/README.md)."""
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from engine.testbed import CN_ADDR
from netlab import ROOT, in_ns, make_testbed, running_router
from load import blaster_argv
from ratio import RESULTS, Figure

pytestmark = pytest.mark.privileged
SECONDS = float(os.environ.get("MMR_BENCH_FLOOD_SECONDS", "30"))
RATE = 40000
GATE_P99_RATIO = 20.0           # flood vs quiet, same router, same run; a margin for a shared machine
GATE_RSS_GROWTH_MB = 16




def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def pings(tb, seconds: float):
    return subprocess.Popen(in_ns(tb, "mn", "ping", "-6", "-n", "-i", "0.05", "-c", str(int(seconds * 20)), "-W", "2",
                                  CN_ADDR), stdout=subprocess.PIPE, text=True)


def summary(out: str) -> dict:
    rtts = np.array([float(x) for x in re.findall(r"time=([\d.]+) ms", out)])
    sent = int(re.search(r"(\d+) packets transmitted", out).group(1))
    return {"sent": sent, "answered": len(set(re.findall(r"icmp_seq=(\d+)", out))),
            "median": float(np.median(rtts)), "p99": float(np.percentile(rtts, 99)), "max": float(rtts.max())}


@pytest.fixture(scope="module")
def testbed():
    with make_testbed("f") as tb:
        yield tb


def test_malformed_flood_fools_nothing(testbed):
    with running_router(testbed) as (router, _):
        pid = router.pid                     # 'ip netns exec' execs the engine in its place
        quiet = summary(pings(testbed, 5).communicate(timeout=60)[0])
        rss0 = rss_mb(pid)
        ping = pings(testbed, SECONDS)
        flood = subprocess.run(blaster_argv(testbed, SECONDS, RATE, 16, 64, "malformed"), capture_output=True, text=True,
                               timeout=SECONDS + 60)
        assert flood.returncode == 0, flood.stderr
        offered = json.loads(flood.stdout)["offered"]
        loud = summary(ping.communicate(timeout=60)[0])
        time.sleep(0.5)
        rss1 = rss_mb(pid)
        st = subprocess.run(in_ns(testbed, "mmr", sys.executable, "-m", "engine", "status", "--json"),
                            capture_output=True, text=True, cwd=ROOT, timeout=30)
        s = json.loads(st.stdout)
    RESULTS.append(Figure("malformed flood from the LAN", f"{offered:,} frames in {SECONDS:.0f} s; ping across: quiet "
                          f"median {quiet['median']:.3f} ms p99 {quiet['p99']:.3f} ms, flooded median "
                          f"{loud['median']:.3f} ms p99 {loud['p99']:.3f} ms max {loud['max']:.3f} ms; "
                          f"engine RSS {rss0:.1f} -> {rss1:.1f} MB; uplink changes "
                          f"{[u['changes'] for u in s['uplinks']]}"))
    assert offered >= 0.8 * SECONDS * RATE, offered
    for u in s["uplinks"]:
        assert u["usable"] and u["changes"] == 0, u               # no false failover
    assert loud["answered"] == loud["sent"] and quiet["answered"] == quiet["sent"], (quiet, loud)
    assert s["drops"]["truncated_l3"] >= offered * 0.99, (s["drops"], offered)
    assert loud["p99"] <= GATE_P99_RATIO * quiet["p99"], (quiet, loud)
    assert rss1 - rss0 <= GATE_RSS_GROWTH_MB, (rss0, rss1)
