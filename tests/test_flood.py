"""A flood of malformed frames from the LAN on a freshly started router: no uplink is taken
down (the probes' replies are read under load), pings across keep crossing, every bad frame
is dropped and counted by reason."""
import json
import os
import re
import subprocess
import sys
import time

import pytest

from engine.netns import link_mac
from engine.testbed import CN_ADDR, MN_ADDR
from netlab import ROOT, in_ns, make_testbed, running_router

pytestmark = pytest.mark.privileged
BLASTER = os.path.join(ROOT, "bench", "blaster.py")
SECONDS, RATE = 10, 40000


@pytest.fixture(scope="module")
def testbed():
    with make_testbed("f") as tb:
        yield tb


def test_malformed_flood_fools_nothing(testbed):
    with running_router(testbed):
        ping = subprocess.Popen(in_ns(testbed, "mn", "ping", "-6", "-n", "-i", "0.05", "-c", str(SECONDS * 20 + 20),
                                      "-W", "2", CN_ADDR), stdout=subprocess.PIPE, text=True)
        mac = link_mac("lan0", testbed.ns("mmr")).hex(":")
        flood = subprocess.run(in_ns(testbed, "mn", sys.executable, BLASTER, "eth0", mac, MN_ADDR, CN_ADDR,
                                     SECONDS, RATE, 16, 64, "malformed"), capture_output=True, text=True,
                               timeout=SECONDS + 30)
        assert flood.returncode == 0, flood.stderr
        offered = json.loads(flood.stdout)["offered"]
        out, _ = ping.communicate(timeout=60)
        time.sleep(0.5)
        st = subprocess.run(in_ns(testbed, "mmr", sys.executable, "-m", "engine", "status", "--json"),
                            capture_output=True, text=True, cwd=ROOT, timeout=30)
        s = json.loads(st.stdout)
    assert offered >= 0.8 * SECONDS * RATE, offered
    for u in s["uplinks"]:
        assert u["usable"] and u["changes"] == 0, u               # no false failover
    sent = int(re.search(r"(\d+) packets transmitted", out).group(1))
    answered = len(set(re.findall(r"icmp_seq=(\d+)", out)))
    assert answered == sent, out[-300:]
    assert s["drops"]["truncated_l3"] >= offered * 0.99, (s["drops"], offered)
