"""mmr run's life on a router: start-up errors, what it changes on the host and restores,
frames that do not fit, and the AF_PACKET ring/TX pair itself.  Each test runs its own
short-lived ``mmr run`` in a testbed of this module (never two routers on one device)."""
import json
import subprocess
import sys

import pytest

from engine.testbed import CN_ADDR
from netlab import ROOT, in_ns, mmr, running_router, make_testbed

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def testbed():
    with make_testbed("l") as tb:
        yield tb


def test_stop_restores_kernel_forwarding(testbed):
    assert "inet mmr" not in testbed.run("mmr", "nft", "list", "tables")
    with running_router(testbed):
        assert "inet mmr" in testbed.run("mmr", "nft", "list", "tables")
    assert "inet mmr" not in testbed.run("mmr", "nft", "list", "tables")
    # and the kernel forwards again on its own
    assert " 0% packet loss" in testbed.run("mn", "ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", CN_ADDR)


def test_summary_at_exit(testbed):
    p = mmr(testbed, "run", "--duration", "1", "--stats-interval", "0")
    assert p.returncode == 0, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("mmr: lan_rx=") and "ar1=" in last and "ar2=" in last


def test_startup_errors_are_one_sentence(testbed, tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text('[engine]\nlan = "lan0"\n[[uplink]]\nname = "x"\ndevice = "nosuchdev"\ngateway = "2001:db8:a1::1"\n')
    p = mmr(testbed, "run", "--config", str(bad))
    assert p.returncode == 2 and "nosuchdev" in p.stderr and "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1
    bad.write_text('[engine]\nlan = "lan0"\n[[uplink]]\nname = "x"\ndevice = "up1"\ngateway = "2001:db8:a1::99"\n')
    p = mmr(testbed, "run", "--config", str(bad))
    assert p.returncode == 2 and "does not answer" in p.stderr and p.stderr.count("\n") == 1
    assert "inet mmr" not in testbed.run("mmr", "nft", "list", "tables")


def _gro(testbed, dev):
    out = testbed.run("mmr", "ethtool", "-k", dev)
    return [line for line in out.splitlines() if line.startswith("generic-receive-offload:")][0].split()[1]


def test_receive_coalescing_switched_off_and_restored(testbed):
    testbed.run("mmr", "ethtool", "-K", "up1", "gro", "on")
    try:
        assert _gro(testbed, "up1") == "on"
        with running_router(testbed) as (_, lines):
            assert _gro(testbed, "up1") == "off"
        assert any("switched gro off on up1" in line for line in lines), lines
        assert _gro(testbed, "up1") == "on"
    finally:
        testbed.run("mmr", "ethtool", "-K", "up1", "gro", "off")


def test_frame_larger_than_the_uplink_mtu_gets_packet_too_big(testbed):
    """LAN MTU 3000, uplinks 1500: a 2000-byte packet is not forwarded (nor truncated); the
    sender learns the path MTU from mmr's ICMPv6 packet too big."""
    testbed.run("mn", "ip", "link", "set", "eth0", "mtu", "3000")
    testbed.run("mmr", "ip", "link", "set", "lan0", "mtu", "3000")
    try:
        with running_router(testbed) as (p, _):
            out = subprocess.run(in_ns(testbed, "mn", "ping", "-6", "-c", "1", "-s", "2000", "-M", "do",
                                       "-W", "2", CN_ADDR), capture_output=True, text=True).stdout
            route = testbed.run("mn", "ip", "-6", "route", "get", CN_ADDR)
            p.terminate()
            err = p.stderr.read()
        assert "Packet too big" in out and "mtu=1500" in out, out
        assert "mtu 1500" in route, route
        assert "oversize=1 " in err, err
    finally:
        testbed.run("mn", "ip", "link", "set", "eth0", "mtu", "1500")
        testbed.run("mmr", "ip", "link", "set", "lan0", "mtu", "1500")
        testbed.run("mn", "ip", "-6", "route", "flush", "cache", check=False)


def test_ring_and_tx_on_a_veth_pair(testbed):
    """RxRing sees exactly the frames a TxSocket sends across a veth pair (in the MN/MMR link)."""
    code = f"""
import sys, time, numpy as np
sys.path.insert(0, {ROOT!r})
from engine import _ring
rx = _ring.RxRing("eth0", timeout_ms=2, promisc=True)
print("ready", flush=True)
time.sleep(1.5)
n, off, ln, ts = rx.batch()
buf = rx.buffer
frames = [bytes(buf[o:o+l]) for o, l in zip(off.tolist(), ln.tolist())]
ours = [f for f in frames if f[12:14] == b"\\x88\\xb5"]
import json
print(json.dumps({{"n": len(ours), "sizes": sorted(set(len(f) for f in ours)), "truncated": rx.truncated}}))
rx.release()
"""
    rxp = subprocess.Popen(["ip", "netns", "exec", testbed.ns("mn"), sys.executable, "-c", code],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert rxp.stdout.readline().strip() == "ready"
    send = f"""
import sys
sys.path.insert(0, {ROOT!r})
from engine import _ring
tx = _ring.TxSocket("lan0")
frames = [b"\\xff" * 6 + b"\\x02" * 6 + b"\\x88\\xb5" + bytes([i % 256]) * (60 + i) for i in range(100)]
print(tx.send_frames(frames))
"""
    s = subprocess.run(["ip", "netns", "exec", testbed.ns("mmr"), sys.executable, "-c", send],
                       capture_output=True, text=True, timeout=20)
    assert s.stdout.strip() == "100", s.stderr
    out, err = rxp.communicate(timeout=20)
    res = json.loads(out.strip().splitlines()[-1])
    assert res["n"] == 100, out + err
    assert res["sizes"] == list(range(74, 174)) and res["truncated"] == 0   # 14 + 60 .. 14 + 159 bytes
