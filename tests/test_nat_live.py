"""Source translation live, in the ISP testbed (issue 11): a private LAN (192.168.1.0/24,
fd00:1::/64) behind ISP1, which drops foreign sources (BCP 38) and routes a delegated
2001:db8:a1:100::/56 to the MMR; CN knows only the ISPs' space.  The kernel's default
offloads stay on.  mmr run translates IPv4 to up1's address (nat = "auto": private sources)
and maps the ULA onto 2001:db8:a1:100::/64 (NPTv6)."""
import json
import subprocess
import time

import pytest

from engine.testbed import ISP, ISP_CN_ADDR4, CN_ADDR
from netlab import in_ns, make_testbed, peer, running_mmr, start_peer

pytestmark = pytest.mark.privileged

UPLINKS = {                     # the gateway of ISP1 learned (gateway = "auto", the default)
    "isp1": """
[[uplink]]
name = "isp1"
device = "up1"
probe_targets = ["198.18.1.1"]
nat6 = "npt"
npt_prefix = "2001:db8:a1:100::/64"
""",
    # ISP2 over the L3 device: no gateway, no MAC, a point-to-point link
    "isp2": """
[[uplink]]
name = "isp2"
device = "up2"
nat6 = "npt"
npt_prefix = "2001:db8:a2:100::/64"
probe_targets = ["198.18.2.1"]
""",
}
CN4 = "::ffff:" + ISP_CN_ADDR4


@pytest.fixture(scope="module")
def bed():
    with make_testbed("natl", ISP) as tb:
        yield tb


def policy(tmp_path, engine="", uplinks=("isp1",), extra=""):
    p = tmp_path / "isp.toml"
    p.write_text('[engine]\nlan = "lan0"\n' + engine + "\n" + "".join(UPLINKS[u] for u in uplinks) + extra)
    return str(p)


def status(tb) -> dict:
    p = subprocess.run(in_ns(tb, "mmr", "python3", "-m", "engine", "status", "--json"), capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def reaches(tb, node, addr, tries=3) -> bool:
    """An echo answered, allowing for a first one lost while mmr asks the kernel for a LAN
    host's MAC (it drops what it cannot deliver yet; the kernel would queue it)."""
    return any(peer(tb, node, "reach", addr, "1").returncode == 0 for _ in range(tries))


def running(tb, path):
    return running_mmr(tb, "mmr", "run", "forwarding", "--config", path)


@pytest.mark.parametrize("isp", ["isp1", "isp2"], ids=["ethernet-uplink", "l3-uplink"])
def test_the_private_lan_reaches_cn_through_both_translations(bed, tmp_path, isp):
    k = isp[-1]
    with running(bed, policy(tmp_path, uplinks=(isp,))) as (_, lines):
        text = "".join(lines)
        assert f"translates IPv4 to 198.18.{k}.2" in text and f"maps fd00:1::/64 to 2001:db8:a{k}:100::/64" in text
        assert reaches(bed, "mn", ISP_CN_ADDR4)
        assert reaches(bed, "mn", CN_ADDR)
        for dst, port in ((CN4, 7001), (CN_ADDR, 7002)):
            srv = start_peer(bed, "cn", "echo-server", port, 5, dst)     # replies from the address asked
            r = peer(bed, "mn", "echo-client", dst, port, 20)
            srv.kill()
            srv.wait()
            assert json.loads(r.stdout)["answered"] == 20, (dst, r.stdout, r.stderr)
        st = status(bed)["translation"]
        assert st["uplinks"][isp]["address"] == f"198.18.{k}.2" and st["mappings"] >= 2


@pytest.mark.parametrize("isp", ["isp1", "isp2"], ids=["ethernet-uplink", "l3-uplink"])
@pytest.mark.parametrize("dst", [CN4, CN_ADDR], ids=["ipv4-napt", "ipv6-npt"])
def test_tcp_both_ways_every_byte(bed, tmp_path, dst, isp):
    """2 MB up (hash-checked by CN) and 2 MB down on a connection MN opened; over the L3
    uplink the super-frames go through its qdisc layer, where the kernel segments them."""
    with running(bed, policy(tmp_path, uplinks=(isp,))):
        sink = start_peer(bed, "cn", "tcp-sink", 7101)
        r = peer(bed, "mn", "tcp-send", dst, 7101, 2_000_000, timeout=60)
        sink.kill()
        sink.wait()
        out = json.loads(r.stdout)
        assert out["answer"] == out["expect"], out
        srv = start_peer(bed, "cn", "tcp-serve", 7102, 2_000_000)
        r = peer(bed, "mn", "tcp-fetch", dst, 7102, 2_000_000, timeout=60)
        srv.kill()
        srv.wait()
        assert json.loads(r.stdout) == {"bytes": 2_000_000, "ok": True}, r.stdout + r.stderr


def test_time_exceeded_comes_back_through_the_nat(bed, tmp_path):
    """A datagram with TTL 2 dies at ISP1 (mmr takes one, ISP1 the other): ISP1's time
    exceeded goes to the uplink's address, and mmr hands it to MN with the quote restored, so
    MN's socket sees it (IP_RECVERR), from ISP1.  IPv6 through NPTv6 the same."""
    with running(bed, policy(tmp_path)):
        r = json.loads(peer(bed, "mn", "ttl-probe", CN4, 33434, 2).stdout)
        assert (r["origin"], r["type"], r["from"]) == (2, 11, "198.18.11.1") or \
            (r["origin"], r["type"]) == (2, 11), r
        r6 = json.loads(peer(bed, "mn", "ttl-probe", CN_ADDR, 33435, 2).stdout)
        assert (r6["origin"], r6["type"]) == (3, 3), r6                       # ICMPv6 time exceeded


def test_path_mtu_discovery_and_fragments_through_the_nat(bed, tmp_path):
    """ISP1 - CN at MTU 1280: ISP1's 'fragmentation needed' reaches MN through the NAT and TCP
    adapts (every byte arrives); a 4000-byte UDP datagram (fragments) goes and comes back."""
    with running(bed, policy(tmp_path)):
        srv = start_peer(bed, "cn", "echo-server", 7201, 5, CN4)
        r = json.loads(peer(bed, "mn", "echo-client", CN4, 7201, 5, 4000).stdout)
        srv.kill()
        srv.wait()
        assert r["answered"] == 5, r
        for node, dev in (("isp1", "eth1"), ("cn", "eth1")):
            bed.run(node, "ip", "link", "set", dev, "mtu", "1280")
        try:
            sink = start_peer(bed, "cn", "tcp-sink", 7202)
            r = peer(bed, "mn", "tcp-send", CN4, 7202, 1_000_000, timeout=60)
            sink.kill()
            sink.wait()
            out = json.loads(r.stdout)
            assert out["answer"] == out["expect"], out
        finally:
            for node, dev in (("isp1", "eth1"), ("cn", "eth1")):
                bed.run(node, "ip", "link", "set", dev, "mtu", "1500")


def test_unsolicited_inbound_is_dropped_and_the_kernel_stays_quiet(bed, tmp_path):
    """CN sends to the uplink's address on a mapping's port nobody opened: mmr drops it
    (nat_unsolicited) and the guard keeps the kernel from answering (its counter rises); a
    reply from another address of CN than the one MN asked does not get in either (what a
    server bound to the wildcard address sends: its egress interface's address)."""
    with running(bed, policy(tmp_path)):
        srv = start_peer(bed, "cn", "echo-server", 53, 3, CN4)
        assert json.loads(peer(bed, "mn", "echo-client", CN4, 53, 2).stdout)["answered"] == 2
        srv.kill()
        srv.wait()
        before = status(bed)["drops"]["nat_unsolicited"]
        sink = start_peer(bed, "mn", "udp-count", 9999, 3)
        code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('198.18.11.2', 5353));\n"
                "[s.sendto(b'x', ('198.18.1.2', p)) for p in (9999, 20000, 40000, 9999)]")
        subprocess.run(in_ns(bed, "cn", "python3", "-c", code), check=True, timeout=10)
        time.sleep(0.5)
        sink.send_signal(15)
        got = json.loads(sink.communicate(timeout=10)[0].splitlines()[-1])
        assert got["datagrams"] == 0 if "datagrams" in got else got.get("n", 0) == 0, got
        assert status(bed)["drops"]["nat_unsolicited"] >= before + 3
        rules = bed.run("mmr", "nft", "list", "table", "inet", "mmr")
        assert "@nat4" in rules and "counter packets 0" not in [ln.strip()[-len("counter packets 0"):]
                                                                for ln in rules.splitlines() if "@nat4" in ln]


def test_port_exhaustion_is_counted_and_shown(bed, tmp_path):
    with running(bed, policy(tmp_path, 'nat_ports = "20000-20063"')):
        code = ("import socket\nfor p in range(30000, 30070):\n"
                "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('192.168.1.10', p))\n"
                "    s.sendto(b'x', ('198.51.100.1', 9)); s.close()")
        subprocess.run(in_ns(bed, "mn", "python3", "-c", code), check=True, timeout=10)
        time.sleep(0.5)
        st = status(bed)
        assert st["translation"]["ports"] == 64
        assert st["translation"]["uplinks"]["isp1"]["mappings"]["udp"] == 64
        assert st["drops"]["nat_exhausted"] >= 6 and st["translation"]["exhausted"] >= 6


def test_an_address_change_is_followed(bed, tmp_path):
    """DHCP gives up1 another address: mmr logs it, drops the old mappings and translates to
    the new one (CN's echo answers)."""
    with running(bed, policy(tmp_path)):
        bed.run("mmr", "ip", "addr", "del", "198.18.1.2/24", "dev", "up1")   # (its secondaries go with it)
        bed.run("mmr", "ip", "addr", "add", "198.18.1.3/24", "dev", "up1")
        try:
            bed.run("mmr", "ip", "-4", "route", "replace", "default", "via", "198.18.1.1", "dev", "up1")
            deadline = time.monotonic() + 3
            while status(bed)["translation"]["uplinks"]["isp1"].get("address") != "198.18.1.3":
                assert time.monotonic() < deadline, status(bed)["translation"]
                time.sleep(0.1)
            srv = start_peer(bed, "cn", "echo-server", 7301, 4, CN4)
            r = json.loads(peer(bed, "mn", "echo-client", CN4, 7301, 5).stdout)
            srv.kill()
            srv.wait()
            assert r["answered"] == 5, r
        finally:
            bed.run("mmr", "ip", "addr", "del", "198.18.1.3/24", "dev", "up1", check=False)
            bed.run("mmr", "ip", "addr", "add", "198.18.1.2/24", "dev", "up1", check=False)
            for rt in ISP.routes["mmr"]:
                bed.run("mmr", "ip", *rt, check=False)


def test_failover_moves_a_translated_flow_and_udp_goes_on(bed, tmp_path):
    """Both ISPs, the flow on ISP1; ISP1's link goes down: the flow moves to ISP2 (the L3
    uplink), its translation changes (counted as moved), and the UDP exchange goes on."""
    pin = '\n[[rule]]\nproto = "udp"\ndport = 7401\npreference = 1\n'
    with running(bed, policy(tmp_path, uplinks=("isp1", "isp2"), extra=pin)):
        srv = start_peer(bed, "cn", "echo-server", 7401, 12, CN4)
        client = subprocess.Popen(in_ns(bed, "mn", "python3", "-m", "engine.peers", "echo-client", CN4, 7401, 200),
                                  stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        first = {f["uplink"] for f in json.loads(subprocess.run(
            in_ns(bed, "mmr", "python3", "-m", "engine", "flows", "--json"), capture_output=True, text=True,
            timeout=30).stdout)["flows"] if f["dport"] == 7401}
        down = "up1" if first == {"isp1"} else "up2"
        bed.run("mmr", "ip", "link", "set", down, "down")
        try:
            out, _ = client.communicate(timeout=30)
        finally:
            bed.run("mmr", "ip", "link", "set", down, "up")
            for rt in ISP.routes["mmr"]:
                bed.run("mmr", "ip", *rt, check=False)
            srv.kill()
            srv.wait()
        r = json.loads(out)
        assert r["answered"] >= 150, (first, r)              # a short gap while the link goes
        assert status(bed)["translation"]["moved"] >= 1


def next_hop_becomes(tb, want, seconds=5.0):
    end = time.monotonic() + seconds
    while status(tb)["next_hops"]["isp1"] != want:
        assert time.monotonic() < end, status(tb)["next_hops"]
        time.sleep(0.1)


def test_the_gateway_is_learned_and_followed(bed, tmp_path):
    """gateway = "auto": ISP1's next hop is the kernel's default route on up1; when the route
    changes (another router on the link, as DHCP or an RA would say), mmr follows it; when it
    goes, ISP1 stops carrying flows, and it carries them again once a route is back."""
    with running(bed, policy(tmp_path)):
        assert status(bed)["next_hops"]["isp1"] == "2001:db8:a1::1"
        assert reaches(bed, "mn", CN_ADDR)
        bed.run("isp1", "ip", "-6", "addr", "add", "2001:db8:a1::5/64", "dev", "eth0", "nodad")
        try:
            bed.run("mmr", "ip", "-6", "route", "replace", "default", "via", "2001:db8:a1::5", "dev", "up1",
                    "metric", "100")
            next_hop_becomes(bed, "2001:db8:a1::5")
            assert reaches(bed, "mn", CN_ADDR)
            bed.run("mmr", "ip", "-6", "route", "del", "default", "via", "2001:db8:a1::5", "dev", "up1",
                    "metric", "100")
            bed.run("mmr", "ip", "-4", "route", "del", "default", "via", "198.18.1.1", "dev", "up1", "metric", "100")
            next_hop_becomes(bed, None)
            assert peer(bed, "mn", "reach", ISP_CN_ADDR4, "1").returncode != 0
        finally:
            for rt in ISP.routes["mmr"]:
                bed.run("mmr", "ip", *rt, check=False)
            bed.run("isp1", "ip", "-6", "addr", "del", "2001:db8:a1::5/64", "dev", "eth0", check=False)
        next_hop_becomes(bed, "2001:db8:a1::1")
        deadline = time.monotonic() + 5
        while peer(bed, "mn", "reach", ISP_CN_ADDR4, "1").returncode != 0:
            assert time.monotonic() < deadline


def test_two_workers_share_the_translation(bed, tmp_path):
    """workers = 2 across both ISPs (one Ethernet, one L3): replies come back through the
    fanout to whichever worker their hash picks, and the one shared translator maps them;
    TCP flows hash-checked, both workers carried traffic."""
    with running(bed, policy(tmp_path, engine="workers = 2", uplinks=("isp1", "isp2"))) as (_, lines):
        assert "(2 workers)" in "".join(lines)
        for k in range(6):
            sink = start_peer(bed, "cn", "tcp-sink", 7500 + k)
            r = peer(bed, "mn", "tcp-send", CN4 if k % 2 else CN_ADDR, 7500 + k, 500_000, timeout=60)
            sink.kill()
            sink.wait()
            out = json.loads(r.stdout)
            assert out["answer"] == out["expect"], out
        code = ("import socket\nfor p in range(31000, 31064):\n"
                "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('192.168.1.10', p))\n"
                "    s.sendto(b'x', ('198.51.100.1', 9)); s.close()")
        subprocess.run(in_ns(bed, "mn", "python3", "-c", code), check=True, timeout=10)   # 64 flows: both workers
        time.sleep(0.3)
        st = status(bed)
        assert all(w["rx_inside"] > 0 for w in st["workers"]), st["workers"]
        assert {k: v for k, v in st["drops"].items() if k.startswith("nat_") and v} == {}, st["drops"]
