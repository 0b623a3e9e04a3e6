"""Failover outage, mmr's defaults against mwan3-like probe settings, same testbed, same run.

A tagged video stream (one datagram every 5 ms, via AR1) crosses the testbed; at t = 1 s
either the MMR's link to AR1 goes down (``ip link set up1 down``: a link event) or AR1 stops
forwarding while its link stays up (nftables drop: only probes can tell).  The outage is the
longest gap in the stream's arrivals at CN around the switch to AR2.

Profiles: mmr's defaults (probes every 200 ms, timeout 400 ms, down after 3) and mwan3-like
(every 10 s, timeout 4 s, down after 5).  Both run mmr; the mwan3-like profile only changes
the probe timing, so its link-down figure still has mmr's netlink events.
"""
import json
import subprocess
import sys
import time

import pytest

from engine.config import default_config_path
from engine.testbed import CN_ADDR
from netlab import ROOT, in_ns, make_testbed, running_router, start_peer
from ratio import RESULTS, Figure

pytestmark = pytest.mark.privileged

CUT_AR1 = ('table inet cut {\n chain pre {\n  type filter hook prerouting priority -300; policy accept;\n'
           '  iifname "eth0" drop\n }\n}\n')
PROFILES = {
    "mmr defaults": "",
    "mwan3-like": "[monitor]\nprobe_interval_ms = 10000\nprobe_timeout_ms = 4000   # mwan3: timeout 4 s\ndown_after = 5\n",
}
GAP_S = 0.005




@pytest.fixture(scope="module")
def bed():
    with make_testbed("f") as tb:
        yield tb


def outage(tb, cfg, how, limit_s):
    n = int((limit_s + 2) / GAP_S)
    with running_router(tb, "--config", str(cfg)):
        sink = start_peer(tb, "cn", "udp-sink", 9500, n * GAP_S * 1.3 + 4)
        send = subprocess.Popen(in_ns(tb, "mn", sys.executable, "-m", "engine.peers", "udp-send", CN_ADDR,
                                      9500, n, 3, 2, 0, GAP_S), cwd=ROOT)
        time.sleep(1.0)
        if how == "link":
            tb.run("mmr", "ip", "link", "set", "up1", "down")
        else:
            subprocess.run(in_ns(tb, "ar1", "nft", "-f", "-"), input=CUT_AR1, text=True, check=True)
        try:
            send.wait(timeout=n * GAP_S * 1.5 + 30)
            time.sleep(0.2)
            sink.terminate()
            out, _ = sink.communicate(timeout=30)
        finally:
            if how == "link":
                tb.run("mmr", "ip", "link", "set", "up1", "up")
            else:
                tb.run("ar1", "nft", "delete", "table", "inet", "cut")
    got = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    devs = [g["dev"] for g in got]
    if "eth2" not in devs:
        return None                      # never switched within the run
    k = devs.index("eth2")
    return (got[k]["t"] - got[k - 1]["t"]) * 1000


@pytest.mark.parametrize("how", ["link", "probe"])
def test_failover_outage_vs_mwan3_like(bed, tmp_path, how):
    base = open(default_config_path()).read()
    res = {}
    for name, extra in PROFILES.items():
        cfg = tmp_path / f"{name.split()[0]}.toml"
        cfg.write_text(base + "\n" + extra)
        limit = 60 if (how, name) == ("probe", "mwan3-like") else 3
        res[name] = outage(bed, cfg, how, limit)
    ours, theirs = res["mmr defaults"], res["mwan3-like"]
    what = "link down (netlink event)" if how == "link" else "AR1 stops forwarding (probes)"
    RESULTS.append(Figure(f"failover outage, {what}",
                          f"mmr defaults {ours:.0f} ms, mwan3-like probe settings "
                          + (f"{theirs:.0f} ms" if theirs is not None else "no switch within 60 s")))
    assert ours is not None and ours < (50 if how == "link" else 1000)
    if how == "probe":
        assert theirs is None or theirs > 10 * ours
