"""mmr run's life on a router: the handover with the kernel at start and stop (no gap, no
duplicate), a kill, start-up errors, frames that do not fit, a device that vanishes, and
the AF_PACKET ring/TX pair itself.  Each test runs its own mmr run in a testbed of this
module (never two routers on one device); the testbed keeps the kernel's default offloads."""
import json
import re
import signal
import subprocess
import sys
import time

import pytest

from engine.testbed import CN_ADDR
from netlab import ROOT, in_ns, mmr, running_router, make_testbed

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def testbed():
    with make_testbed("l") as tb:
        yield tb


def tables(tb):
    return tb.run("mmr", "nft", "list", "tables")


def ping_stats(out: str) -> dict:
    sent = int(re.search(r"(\d+) packets transmitted", out).group(1))
    seqs = [int(x) for x in re.findall(r"icmp_seq=(\d+)", out)]
    return {"sent": sent, "answered": len(set(seqs)), "dups": out.count("DUP!")}


def test_handover_at_start_and_stop_has_no_gap_and_no_duplicate(testbed):
    """Pings every 20 ms from MN across the MMR while mmr starts (the kernel hands over) and
    stops (mmr hands back): every ping answered once, none twice, and mmr carried some."""
    p = subprocess.Popen(in_ns(testbed, "mn", "ping", "-6", "-n", "-i", "0.02", "-c", "350", "-W", "2", CN_ADDR),
                         stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    with running_router(testbed) as (router, _):
        time.sleep(2.0)
        router.send_signal(signal.SIGTERM)
        err = router.stderr.read()
        router.wait(timeout=10)
    out, _ = p.communicate(timeout=30)
    st = ping_stats(out)
    assert st["sent"] == 350 and st["answered"] == 350 and st["dups"] == 0, st
    carried = int(re.search(r"rx_inside=(\d+)", err.strip().splitlines()[-1]).group(1))
    assert carried >= 50, err                  # mmr forwarded a good share of them
    assert "inet mmr" not in tables(testbed)


def test_sigkill_leaves_the_kernel_forwarding(testbed):
    """Killed without a chance to clean up, mmr's nftables table goes with it (its owner,
    the nft child, sees its input close): the kernel forwards again at once."""
    p = subprocess.Popen(in_ns(testbed, "mmr", sys.executable, "-m", "engine", "run", "--stats-interval", "0"),
                         cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        while "forwarding" not in p.stderr.readline():
            pass
        assert "inet mmr" in tables(testbed)
    finally:
        p.kill()
        p.wait()
    deadline = time.monotonic() + 3
    while "inet mmr" in tables(testbed) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "inet mmr" not in tables(testbed)
    assert " 0% packet loss" in testbed.run("mn", "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", CN_ADDR)


def test_summary_at_exit(testbed):
    p = mmr(testbed, "run", "--duration", "1", "--stats-interval", "0")
    assert p.returncode == 0, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("mmr: rx_inside=") and "up_ar1=" in last and "up_ar2=" in last
    assert "Traceback" not in p.stderr


def test_startup_errors_are_one_sentence(testbed, tmp_path):
    bad = tmp_path / "p.toml"
    # a device missing at start is waited for, the LAN's too (tests/test_uplink_churn.py,
    # tests/test_lan_churn.py): a mistyped LAN name is one warning line, not silence
    bad.write_text('[engine]\nlan = "nosuchdev"\n[[uplink]]\nname = "x"\ndevice = "up1"\ngateway = "2001:db8:a1::1"\n')
    p = mmr(testbed, "run", "--config", str(bad), "--duration", "1", "--stats-interval", "0")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.count("warning: the LAN device nosuchdev does not exist yet") == 1, p.stderr
    bad.write_text('[engine]\nlan = "lan0"\n[[uplink]]\nname = "x"\ndevice = "up1"\ngateway = "2001:db8:a1::99"\n')
    p = mmr(testbed, "run", "--config", str(bad))
    assert p.returncode == 2 and "does not answer" in p.stderr and p.stderr.count("\n") == 1
    assert "inet mmr" not in tables(testbed)


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
        assert "drop_oversize=1" in err and "icmp_sent=1 " in err, err
    finally:
        testbed.run("mn", "ip", "link", "set", "eth0", "mtu", "1500")
        testbed.run("mmr", "ip", "link", "set", "lan0", "mtu", "1500")
        testbed.run("mn", "ip", "-6", "route", "flush", "cache", check=False)


def test_a_vanished_uplink_is_logged_and_the_rest_keeps_forwarding(testbed):
    """up1 is deleted while mmr runs (a modem unplugged): one log line, ar1 unusable with
    'device removed', its flows move, the LAN keeps reaching CN through ar2."""
    with running_router(testbed) as (p, _):
        assert " 0% packet loss" in testbed.run("mn", "ping", "-6", "-c", "2", "-i", "0.2", CN_ADDR)
        testbed.run("mmr", "ip", "link", "del", "up1")
        try:
            time.sleep(0.5)
            out = testbed.run("mn", "ping", "-6", "-c", "5", "-i", "0.2", "-W", "2", CN_ADDR)
            st = subprocess.run(in_ns(testbed, "mmr", sys.executable, "-m", "engine", "status", "--json"),
                                capture_output=True, text=True, cwd=ROOT, timeout=30)
            assert p.poll() is None                      # still running
            p.terminate()
            err = p.stderr.read()
        finally:
            testbed.relink("mmr", "up1")
    assert " 0% packet loss" in out, out
    ar1 = {u["name"]: u for u in json.loads(st.stdout)["uplinks"]}["ar1"]
    assert not ar1["usable"] and ar1["reason"] == "device removed", (ar1, err)
    assert "device up1 of uplink ar1 disappeared" in err and "Traceback" not in err, err
    assert "internal error" not in err, err


def test_ring_and_tx_on_a_veth_pair(testbed):
    """RxRing sees exactly the frames a TxSocket sends across a veth pair (the MN/MMR link),
    each once, whole, with a zero virtio-net header."""
    code = f"""
import sys, time, json
sys.path.insert(0, {ROOT!r})
from engine import _ring
rx = _ring.RxRing("eth0", capacity=1024)
print("ready", flush=True)
time.sleep(1.5)
n = rx.batch()
buf = rx.buffer
frames = [bytes(buf[o:o+l]) for o, l in zip(rx.offsets[:n].tolist(), rx.lengths[:n].tolist())]
ours = [f for f in frames if f[12:14] == b"\\x88\\xb5"]
flags = sorted(set(int(x) for x in rx.vnet[:n]["flags"]))
print(json.dumps({{"n": len(ours), "sizes": sorted(set(len(f) for f in ours)), "truncated": rx.truncated,
                  "flags": flags}}))
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
    assert res["flags"] == [0]


def test_super_frames_come_through_the_ring_whole(testbed):
    """A local TCP sender with the kernel's default offloads hands the veth 64 KiB
    super-frames; the ring delivers them whole (read from the socket, in order) with their
    segmentation in the virtio-net header."""
    code = f"""
import sys, time, json, select
sys.path.insert(0, {ROOT!r})
from engine import _ring
rx = _ring.RxRing("lan0", capacity=256)
print("ready", flush=True)
big, gso, end = 0, set(), time.time() + 3
p = select.poll(); p.register(rx.fileno(), select.POLLIN)
while time.time() < end:
    p.poll(50)
    n = rx.batch()
    for i in range(n):
        if rx.lengths[i] > 2000:
            big += 1
            gso.add((int(rx.vnet[i]["gso_type"]), int(rx.vnet[i]["flags"])))
    rx.release()
print(json.dumps({{"big": big, "copied": rx.copied, "truncated": rx.truncated, "gso": sorted(gso)}}))
"""
    rxp = subprocess.Popen(["ip", "netns", "exec", testbed.ns("mmr"), sys.executable, "-c", code],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert rxp.stdout.readline().strip() == "ready"
    sink = subprocess.Popen(in_ns(testbed, "mmr", sys.executable, "-m", "engine.peers", "tcp-sink", 5999),
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "ready"
    snd = subprocess.run(in_ns(testbed, "mn", sys.executable, "-m", "engine.peers", "tcp-send", "2001:db8:1::1",
                               5999, 20_000_000), capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert snd.returncode == 0, snd.stderr
    out, err = rxp.communicate(timeout=20)
    sink.wait(timeout=10)
    res = json.loads(out.strip().splitlines()[-1])
    assert res["big"] > 0 and res["copied"] == res["big"] and res["truncated"] == 0, res
    assert [4, 1] in res["gso"], res             # TCPv6 segmentation, checksum unfinished
