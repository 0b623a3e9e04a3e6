"""Several forwarding workers (engine/workers.py): the default count, the fanout program and
its Python reference (checked against the kernel), and ``mmr run --workers 2`` live in the
draft's testbed: both workers forward, each flow stays in one worker and on one uplink, a
failover moves the flows of every worker, TCP crosses intact."""
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from engine.testbed import CN_ADDR
from engine.workers import default_workers, flow_hash, fanout_program
from netlab import ROOT, in_ns, make_testbed, peer, running_router, start_peer


# ---------------------------------------------------------------------- the default
def fake_sysfs(tmp_path, queues: dict) -> str:
    for dev, n in queues.items():
        for q in range(n):
            (tmp_path / dev / "queues" / f"rx-{q}").mkdir(parents=True)
            (tmp_path / dev / "queues" / f"tx-{q}").mkdir(parents=True, exist_ok=True)
    return str(tmp_path)


def test_default_is_cpus_capped_at_the_smallest_rx_queue_count(tmp_path):
    sysfs = fake_sysfs(tmp_path, {"lan0": 8, "up1": 4, "up2": 2, "veth0": 1})
    assert default_workers(["lan0", "up1"], affinity={0, 1, 2, 3, 4, 5}, sysfs=sysfs) == 4
    assert default_workers(["lan0", "up1", "up2"], affinity={0, 1, 2, 3}, sysfs=sysfs) == 2
    assert default_workers(["lan0", "up1"], affinity={3}, sysfs=sysfs) == 1       # one CPU allowed
    assert default_workers(["lan0", "veth0"], affinity={0, 1}, sysfs=sysfs) == 1  # a veth: 1 queue
    assert default_workers(["lan0", "gone0"], affinity={0, 1}, sysfs=sysfs) == 1  # sysfs silent: 1
    assert default_workers(["lan0"], affinity=set(range(200)), sysfs=fake_sysfs(tmp_path / "x", {"lan0": 128})) == 64


def test_this_machines_veths_default_to_one(tmp_path):
    assert default_workers(["lo"]) == 1


@pytest.mark.parametrize("value", ["0", "-1", "100000", '"two"', "2.0", "true"])
def test_workers_out_of_range_or_not_an_integer_is_one_sentence(tmp_path, value):
    p = tmp_path / "w.toml"
    src = open(os.path.join(ROOT, "engine", "default.toml")).read()
    assert "[engine]\n" in src
    p.write_text(src.replace("[engine]\n", f"[engine]\nworkers = {value}\n", 1))
    r = subprocess.run([sys.executable, "-m", "engine", "config", "--config", str(p), "--check"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "engine.workers" in err and "1 to 64" in err and err.count("\n") == 0, err
    assert "Traceback" not in r.stderr


def test_workers_option_out_of_range_is_one_sentence():
    r = subprocess.run([sys.executable, "-m", "engine", "run", "--workers", "0"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 2 and "--workers 0: use 1 to 64" in r.stderr and "Traceback" not in r.stderr


def test_workers_is_accepted_and_absent_means_auto(tmp_path):
    from engine.config import load_config

    assert load_config(None).workers is None
    src = open(os.path.join(ROOT, "engine", "default.toml")).read()
    p = tmp_path / "w.toml"
    p.write_text(src.replace("[engine]\n", "[engine]\nworkers = 3\n", 1))
    assert load_config(str(p)).workers == 3


def test_one_worker_keeps_todays_path():
    """workers = 1: no fanout, no thread, and the connection manager works on the engine
    thread's own selector and flowbase, as before."""
    from types import SimpleNamespace

    from engine.datapath import Datapath

    dp = SimpleNamespace(workers=[], pipe=SimpleNamespace(selector=object(), flows=object()))
    sel, flows = Datapath._conn_views(dp)
    assert sel is dp.pipe.selector and flows is dp.pipe.flows


def test_host_mode_runs_one_worker_and_says_so():
    from types import SimpleNamespace

    from engine.datapath import Datapath

    said = []
    host = SimpleNamespace(inside=SimpleNamespace(router=False), log=SimpleNamespace(warning=said.append))
    assert Datapath._workers_wanted(host, SimpleNamespace(workers=4), None) == 1
    assert len(said) == 1 and "ignored by mmr host" in said[0]
    assert Datapath._workers_wanted(host, SimpleNamespace(workers=None), None) == 1 and len(said) == 1
    router = SimpleNamespace(inside=SimpleNamespace(router=True, devices_needed=lambda cfg: ["nosuchdev0"]),
                             log=SimpleNamespace(warning=said.append))
    cfg = SimpleNamespace(workers=None, uplinks=[SimpleNamespace(device="nosuchdev1", empty=False),
                                                 SimpleNamespace(device="", empty=True)])   # a free slot
    assert Datapath._workers_wanted(router, cfg, None) == 1          # sysfs knows no queues: 1
    assert Datapath._workers_wanted(router, cfg, 3) == 3             # --workers
    cfg.workers = 2
    assert Datapath._workers_wanted(router, cfg, None) == 2


# ---------------------------------------------------------------------- the hash
def v6(src, dst, nh, l4=b"", hbh=None):
    import ipaddress
    ext = b""
    if hbh is not None:
        ext = bytes([nh, hbh]) + bytes(6 + 8 * hbh)
        nh = 0
    payload = ext + l4
    return (bytes([0x60, 0, 0, 0]) + len(payload).to_bytes(2, "big") + bytes([nh, 64])
            + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload)


def v4(src, dst, proto, l4=b"", frag=0, ihl=5):
    import ipaddress
    opts = bytes(4 * (ihl - 5))
    total = 4 * ihl + len(l4)
    return (bytes([0x40 | ihl, 0]) + total.to_bytes(2, "big") + b"\0\0" + frag.to_bytes(2, "big")
            + bytes([64, proto, 0, 0]) + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
            + opts + l4)


def udp(sport, dport, data=b"x" * 8):
    return sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + (8 + len(data)).to_bytes(2, "big") + b"\0\0" + data


def test_hash_is_symmetric_and_uses_ports_where_the_parser_does():
    a = flow_hash(v6("2001:db8:1::2", "2001:db8:ff::1", 17, udp(1000, 53)), 0x86DD)
    b = flow_hash(v6("2001:db8:ff::1", "2001:db8:1::2", 17, udp(53, 1000)), 0x86DD)
    assert a == b
    hbh = flow_hash(v6("2001:db8:1::2", "2001:db8:ff::1", 17, udp(1000, 53), hbh=0), 0x86DD)
    assert hbh == a                                   # the option's header does not move a flow
    spread = {flow_hash(v6("2001:db8:1::2", "2001:db8:ff::1", 17, udp(p, 53)), 0x86DD) % 2 for p in range(1000, 1032)}
    assert spread == {0, 1}
    x = flow_hash(v4("192.0.2.5", "198.51.100.1", 17, udp(4000, 53)), 0x0800)
    assert x == flow_hash(v4("198.51.100.1", "192.0.2.5", 17, udp(53, 4000)), 0x0800)
    assert x == flow_hash(v4("192.0.2.5", "198.51.100.1", 17, udp(4000, 53), ihl=7), 0x0800)
    # every fragment of a datagram: addresses only (the parser keys fragments without ports)
    first = flow_hash(v4("192.0.2.5", "198.51.100.1", 17, udp(4000, 53), frag=0x2000), 0x0800)
    later = flow_hash(v4("192.0.2.5", "198.51.100.1", 17, b"y" * 16, frag=0x0002), 0x0800)
    assert first == later
    assert flow_hash(b"\x60\0", 0x86DD) == 0 and flow_hash(b"", 0x0806) == 0
    assert len(fanout_program()) < 128


# ---------------------------------------------------------------------- the kernel agrees
AGREE = textwrap.dedent("""
    import json, select, socket, sys, time
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from engine.workers import join_fanout, flow_hash
    from test_workers import v6, v4, udp
    N = 3
    socks = []
    for k in range(N):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)     # SO_RCVBUFFORCE: hold all 800
        s.bind(("fb", 3))
        socks.append(s)
    join_fanout(socks, "fb")
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    tx.bind(("fa", 0))
    eth = bytes.fromhex("020000000002020000000001")
    frames = []
    for p in range(200):
        frames.append((0x86DD, v6("2001:db8:1::%x" % (p % 7 + 1), "2001:db8:ff::%x" % (p % 5 + 1), 17,
                                  udp(1000 + p, 53, b"m%05d" % p), hbh=(0 if p % 3 == 0 else None))))
        frames.append((0x86DD, v6("2001:db8:1::2", "2001:db8:ff::1", 6, udp(2000 + p, 443, b"t%05d" % p))))
        frames.append((0x0800, v4("192.0.2.%d" % (p % 50 + 1), "198.51.100.1", 17, udp(3000 + p, 53, b"f%05d" % p),
                                  frag=(0x2000 if p % 4 == 0 else 0), ihl=(6 if p % 5 == 0 else 5))))
        frames.append((0x86DD, v6("2001:db8:1::%x" % (p + 1), "2001:db8:ff::1", 58, b"\\x80\\0\\0\\0i%05d" % p)))
    want = {{}}
    for et, l3 in frames:
        tx.send(eth + et.to_bytes(2, "big") + l3)
        want[l3] = flow_hash(l3, et) % N
    got = {{}}
    end = time.time() + 2
    while time.time() < end and len(got) < len(want):
        r, _, _ = select.select(socks, [], [], 0.2)
        for s in r:
            data = s.recv(2048)
            if data[14:] in want:                          # not the kernel's own ND/MLD
                got[data[14:]] = socks.index(s)
    print(json.dumps({{"sent": len(want), "got": len(got),
                      "agree": sum(1 for k, v in got.items() if want.get(k) == v),
                      "per_socket": [list(got.values()).count(k) for k in range(N)]}}))
""")


@pytest.mark.privileged
def test_kernel_fanout_agrees_with_the_reference():
    """Frames with known tuples sent into a veth land in the fanout member the Python
    reference names (member k = the k-th socket to join)."""
    ns = f"mmrfo{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        ip = ["ip", "netns", "exec", ns, "ip"]
        subprocess.run(ip + ["link", "add", "fa", "type", "veth", "peer", "name", "fb"], check=True)
        for d in ("fa", "fb", "lo"):
            subprocess.run(ip + ["link", "set", d, "up"], check=True)
        code = AGREE.format(root=ROOT, tests=os.path.dirname(os.path.abspath(__file__)))
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True,
                           text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["got"] == res["sent"] == 800, res
        assert res["agree"] == res["sent"], res
        assert min(res["per_socket"]) > 100, res
    finally:
        subprocess.run(["ip", "netns", "del", ns])


# ---------------------------------------------------------------------- live, workers = 2
SENDER = textwrap.dedent("""
    import socket, sys, time
    dst, port, flows, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    socks = []
    for f in range(flows):
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind(("", 20000 + f))
        socks.append(s)
    for i in range(n):
        for f, s in enumerate(socks):
            s.sendto(b"%d %d" % (f, i), (dst, port))
        time.sleep(0.01)
""")

FLOWS, PER_FLOW = 48, 10


def many_flows(tb, port):
    sink = start_peer(tb, "cn", "udp-sink", port, 4)
    r = subprocess.run(in_ns(tb, "mn", sys.executable, "-c", SENDER, CN_ADDR, port, FLOWS, PER_FLOW),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out, _ = sink.communicate(timeout=20)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def mmr_json(tb, *args):
    r = subprocess.run(in_ns(tb, "mmr", sys.executable, "-m", "engine", *args, "--json"),
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def bed():
    with make_testbed("w") as tb:
        yield tb


@pytest.mark.privileged
def test_two_workers_share_flows_keep_them_and_fail_over_together(bed):
    with running_router(bed, "--workers", "2") as (p, lines):
        assert "(2 workers)" in "".join(lines)
        got = many_flows(bed, 7400)
        assert len(got) >= FLOWS * PER_FLOW - 4
        status = mmr_json(bed, "status")
        per = {w["worker"]: w for w in status["workers"]}
        assert set(per) == {0, 1}
        assert per[0]["rx_inside"] > 0 and per[1]["rx_inside"] > 0, per       # (a) both worked
        flows = mmr_json(bed, "flows")["flows"]
        mine = [f for f in flows if f["dport"] == 7400]
        keys = [(f["src"], f["sport"]) for f in mine]
        assert len(keys) == len(set(keys)) == FLOWS, mine                 # (b) one worker per flow
        assert {f["worker"] for f in mine} == {0, 1}
        for f in mine:
            assert f["packets"] >= PER_FLOW - 1, f
        by_flow = {}
        for g in got:                                                     # ... and one uplink
            by_flow.setdefault(g["data"].split()[0], set()).add(g["dev"])
        assert all(len(v) == 1 for v in by_flow.values()), by_flow
        # (c) failover: uplink ar2 goes down; the flows of every worker on it move to ar1
        on_ar2 = [f for f in mine if f["uplink"] == "ar2"]
        assert {f["worker"] for f in on_ar2} == {0, 1}, mine     # untagged: load balanced over both
        dev = "up2"
        bed.run("mmr", "ip", "link", "set", dev, "down")
        try:
            deadline = time.time() + 5
            while time.time() < deadline:
                moved = [f for f in mmr_json(bed, "flows")["flows"] if f["dport"] == 7400]
                if {f["uplink"] for f in moved} == {"ar1"}:
                    break
                time.sleep(0.1)
            assert {f["uplink"] for f in moved} == {"ar1"}, moved
            assert {f["worker"] for f in moved} == {0, 1}
            assert {(f["src"], f["sport"]): f["worker"] for f in moved} == \
                {(f["src"], f["sport"]): f["worker"] for f in mine}          # nobody changed worker
            assert mmr_json(bed, "status")["moved_flows"] >= len(on_ar2)
            got2 = many_flows(bed, 7400)
            assert len(got2) >= FLOWS * PER_FLOW - 4
            assert {g["dev"] for g in got2} == {"eth1"}                      # all through AR1
        finally:
            bed.run("mmr", "ip", "link", "set", dev, "up")


@pytest.mark.privileged
def test_tcp_crosses_two_workers_intact(bed):
    with running_router(bed, "--workers", "2"):
        for port in (5301, 5302, 5303):
            sink = start_peer(bed, "cn", "tcp-sink", port)
            r = peer(bed, "mn", "tcp-send", CN_ADDR, port, 3_000_000, timeout=60)
            sink.wait(timeout=10)
            assert r.returncode == 0, r.stderr
            res = json.loads(r.stdout)
            assert res["answer"] == res["expect"]
        status = mmr_json(bed, "status")
        assert status["counters"]["super_frames"] > 0
        assert status["counters"]["tx_errors"] == 0
        assert sum(w["rx_inside"] for w in status["workers"]) == status["counters"]["rx_inside"]
        # a reload reaches every worker; both forward on
        r = subprocess.run(in_ns(bed, "mmr", sys.executable, "-m", "engine", "reload"), capture_output=True,
                           text=True, cwd=ROOT, timeout=30)
        assert r.returncode == 0 and "reloaded" in r.stdout + r.stderr, (r.stdout, r.stderr)
        got = many_flows(bed, 7401)
        assert len(got) >= FLOWS * PER_FLOW - 4
        workers = {w["worker"]: w["rx_inside"] for w in mmr_json(bed, "status")["workers"]}
        assert min(workers.values()) > 0, workers
