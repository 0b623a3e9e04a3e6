"""The stateful edge live, in the ISP testbed (issue 11 item 2): MN (fd00:1::10) behind
NPTv6 onto ISP1's delegated 2001:db8:a1:100::/64.  From ISP1 only replies to MN's flows, the
ICMPv6 errors about them and the prefixes listed as routed reach the LAN; the rest is
dropped and counted (edge_unsolicited).  The kernel's default offloads stay on."""
import ipaddress
import json
import subprocess
import time

import pytest

from engine.ref.nat import Npt66Ref
from engine.testbed import CN_ADDR, ISP, ISP_MN_ADDR
from netlab import in_ns, make_testbed, peer, running_mmr, start_peer
from test_host_offload import transfer

pytestmark = pytest.mark.privileged

ISP1 = """
[[uplink]]
name = "isp1"
device = "up1"
probe_targets = ["198.18.1.1"]
nat6 = "npt"
npt_prefix = "2001:db8:a1:100::/64"
"""
ROUTED_NET = "2001:db8:a1:101::/64"         # inside ISP1's delegated /56, numbered on the LAN
ROUTED_MN = "2001:db8:a1:101::10"


def mapped(addr: str) -> str:
    """MN's address as NPTv6 shows it outside (RFC 6296: the checksum-neutral mapping)."""
    npt = Npt66Ref(1)
    npt.set_prefixes(0, ipaddress.ip_network("fd00:1::/64"), ipaddress.ip_network("2001:db8:a1:100::/64"))
    pkt = bytearray(b"\x60" + bytes(3) + b"\x00\x08\x11\x40" + ipaddress.ip_address(addr).packed
                    + ipaddress.ip_address(CN_ADDR).packed + b"\x13\x88\x00\x35\x00\x08\x00\x00")
    assert npt.out_packet(pkt, 0) == "ok"
    return str(ipaddress.ip_address(bytes(pkt[8:24])))


MN_OUT = mapped(ISP_MN_ADDR)


@pytest.fixture(scope="module")
def bed():
    with make_testbed("edge", ISP) as tb:
        yield tb


def policy(tmp_path, engine="", extra=""):
    p = tmp_path / "edge.toml"
    p.write_text('[engine]\nlan = "lan0"\n' + engine + "\n" + ISP1 + extra)
    return str(p)


def running(tb, path):
    return running_mmr(tb, "mmr", "run", "forwarding", "--config", path)


def drops(tb) -> dict:
    p = subprocess.run(in_ns(tb, "mmr", "python3", "-m", "engine", "status", "--json"), capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["drops"]


def send_udp_from_cn(tb, dst: str, port: int, n: int = 3):
    code = (f"import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(('{CN_ADDR}', 5353));\n"
            f"[s.sendto(b'x', ('{dst}', {port})) for _ in range({n})]")
    subprocess.run(in_ns(tb, "cn", "python3", "-c", code), check=True, timeout=10)


def count_at_mn(tb, port, action) -> int:
    sink = start_peer(tb, "mn", "udp-count", port, 5)
    action()
    time.sleep(0.5)
    sink.send_signal(15)
    return json.loads(sink.communicate(timeout=10)[0].splitlines()[-1])["datagrams"]


def test_unsolicited_ipv6_is_dropped_while_mns_own_flows_work(bed, tmp_path):
    """MN's UDP and TCP to CN work through NPTv6 (replies and data, hash-checked); CN's
    datagrams to MN's outside address on a port MN never used are dropped and counted."""
    with running(bed, policy(tmp_path)):
        srv = start_peer(bed, "cn", "echo-server", 7601, 5, CN_ADDR)
        r = json.loads(peer(bed, "mn", "echo-client", CN_ADDR, 7601, 3).stdout)
        srv.kill()
        srv.wait()
        assert r["answered"] == 3, r
        srv = start_peer(bed, "cn", "tcp-serve", 7602, 1_000_000)
        r = peer(bed, "mn", "tcp-fetch", CN_ADDR, 7602, 1_000_000, timeout=60)
        srv.wait(timeout=10)
        assert json.loads(r.stdout) == {"bytes": 1_000_000, "ok": True}, r.stdout + r.stderr
        before = drops(bed)["edge_unsolicited"]
        got = count_at_mn(bed, 9999, lambda: send_udp_from_cn(bed, MN_OUT, 9999))
        assert got == 0
        assert drops(bed)["edge_unsolicited"] >= before + 3


def test_path_mtu_discovery_over_ipv6_passes_the_edge(bed, tmp_path):
    """ISP1's link to CN at MTU 1280 (CN's own at 1500: its MSS lets MN send full frames):
    ISP1's packet too big about MN's TCP segments reaches MN (it quotes a packet of MN's
    flow; MN's path MTU to CN becomes 1280) and the transfer completes, hash-checked."""
    with running(bed, policy(tmp_path)):
        bed.run("mn", "ip", "-6", "route", "flush", "cache")
        bed.run("isp1", "ip", "link", "set", "eth1", "mtu", "1280")
        try:
            before = drops(bed)["edge_unsolicited"]
            sink = start_peer(bed, "cn", "tcp-sink", 7701)
            r = peer(bed, "mn", "tcp-send", CN_ADDR, 7701, 1_000_000, timeout=60)
            sink.kill()
            sink.wait()
            out = json.loads(r.stdout)
            assert out["answer"] == out["expect"], out
            assert "mtu 1280" in route_mtu(bed), route_mtu(bed)
            assert drops(bed)["edge_unsolicited"] == before
        finally:
            bed.run("isp1", "ip", "link", "set", "eth1", "mtu", "1500")
            bed.run("mn", "ip", "-6", "route", "flush", "cache")


FORGE = """
import socket, struct, sys, ipaddress
mn, cn, sport, dport, mtu = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
quoted = (struct.pack("!IHBB", 6 << 28, 8 + 1400, 17, 64) + ipaddress.ip_address(mn).packed
          + ipaddress.ip_address(cn).packed + struct.pack("!HHHH", sport, dport, 8 + 1400, 0) + bytes(1000))
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.bind((cn, 0))
s.sendto(struct.pack("!BBHI", 2, 0, 0, mtu) + quoted, (mn, 0))     # the kernel fills the checksum
"""


def route_mtu(tb) -> str:
    return tb.run("mn", "ip", "-6", "route", "get", CN_ADDR)


def test_a_forged_error_about_an_unknown_flow_is_dropped(bed, tmp_path):
    """MN keeps a UDP socket on port 40000 that sent to CN port 7801.  A packet too big from
    CN quoting MN:40000 -> CN:7802 (no such flow) is dropped at the edge, so MN's path MTU to
    CN stays (MN's stack would take it: the socket is not connected); the same quoting the
    real flow passes, and MN's path MTU to CN becomes what it says."""
    with running(bed, policy(tmp_path)):
        bed.run("mn", "ip", "-6", "route", "flush", "cache")
        holder = subprocess.Popen(in_ns(bed, "mn", "python3", "-c",
                                        "import socket, time; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM);"
                                        f"s.bind(('::', 40000)); s.sendto(b'x', ('{CN_ADDR}', 7801));"
                                        "print('ready', flush=True); time.sleep(20)"),
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "ready"
            time.sleep(0.3)
            before = drops(bed)["edge_unsolicited"]
            subprocess.run(in_ns(bed, "cn", "python3", "-c", FORGE, MN_OUT, CN_ADDR, 40000, 7802, 1300),
                           check=True, timeout=10)
            time.sleep(0.3)
            assert drops(bed)["edge_unsolicited"] == before + 1
            assert "mtu 1300" not in route_mtu(bed)
            subprocess.run(in_ns(bed, "cn", "python3", "-c", FORGE, MN_OUT, CN_ADDR, 40000, 7801, 1300),
                           check=True, timeout=10)
            time.sleep(0.3)
            assert drops(bed)["edge_unsolicited"] == before + 1
            assert "mtu 1300" in route_mtu(bed), route_mtu(bed)
        finally:
            holder.kill()
            holder.wait()
            bed.run("mn", "ip", "-6", "route", "flush", "cache")


def test_a_routed_prefix_is_open(bed, tmp_path):
    """MN also has an address from ISP1's delegated /56 (no translation): listed in
    routed_prefixes, CN's datagrams to it reach MN; without the listing they are dropped."""
    bed.run("mmr", "ip", "addr", "add", "2001:db8:a1:101::1/64", "dev", "lan0")
    bed.run("mn", "ip", "addr", "add", ROUTED_MN + "/64", "dev", "eth0")
    try:
        for routed, want in ((True, 3), (False, 0)):
            engine = f'routed_prefixes = ["{ROUTED_NET}"]\n' if routed else ""
            with running(bed, policy(tmp_path, engine)):
                # the first datagram may wait for MN's MAC (mmr asks the kernel, drops it)
                send_udp_from_cn(bed, ROUTED_MN, 9998, 1)
                time.sleep(0.3)
                got = count_at_mn(bed, 9999, lambda: send_udp_from_cn(bed, ROUTED_MN, 9999))
                assert got == want, (routed, got)
    finally:
        bed.run("mn", "ip", "addr", "del", ROUTED_MN + "/64", "dev", "eth0")
        bed.run("mmr", "ip", "addr", "del", "2001:db8:a1:101::1/64", "dev", "lan0")


def test_two_workers_share_the_edge(bed, tmp_path):
    """workers = 2: 64 IPv6 UDP flows from MN, each answered by CN; a reply's hash may pick
    the other worker than its flow's, and the one shared table knows it: every flow gets its
    answer, nothing is dropped as unsolicited, both workers carried traffic."""
    with running(bed, policy(tmp_path, "workers = 2")) as (_, lines):
        assert "(2 workers)" in "".join(lines)
        srv = start_peer(bed, "cn", "echo-server", 7901, 8, CN_ADDR)
        code = ("import socket\nsocks = []\nfor p in range(32000, 32064):\n"
                "    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(('::', p)); s.settimeout(2)\n"
                f"    s.connect(('{CN_ADDR}', 7901)); s.send(b'x'); socks.append(s)\n"
                "n = 0\nfor s in socks:\n    try:\n        s.recv(100); n += 1\n    except OSError:\n"
                "        s.send(b'x')\n        try:\n            s.recv(100); n += 1\n        except OSError:\n"
                "            pass\nprint(n)")
        before = drops(bed)["edge_unsolicited"]
        r = subprocess.run(in_ns(bed, "mn", "python3", "-c", code), capture_output=True, text=True, timeout=60)
        srv.kill()
        srv.wait()
        assert r.stdout.strip() == "64", r.stdout + r.stderr
        p = subprocess.run(in_ns(bed, "mmr", "python3", "-m", "engine", "status", "--json"), capture_output=True,
                           text=True, timeout=30)
        st = json.loads(p.stdout)
        assert st["drops"]["edge_unsolicited"] == before
        assert all(w["rx_inside"] > 0 for w in st["workers"]), st["workers"]
        assert st["edge"]["flows"] >= 64 and st["edge"]["uplinks"] == {"isp1": "stateful"}, st["edge"]


FORWARD = f"""
[[forward]]
proto = "tcp"
port = 8443
to = "{ISP_MN_ADDR}"
"""


def fetch_from_mn(tb, dst, port, listen):
    """CN fetches 1 MB from dst:port, served by MN on port listen: every byte arrives, hash-checked."""
    srv = start_peer(tb, "mn", "tcp-serve", listen, 1_000_000)
    r = peer(tb, "cn", "tcp-fetch", dst, port, 1_000_000, timeout=60)
    srv.wait(timeout=10)
    assert json.loads(r.stdout) == {"bytes": 1_000_000, "ok": True}, r.stdout + r.stderr


def fetch_over_a_1280_link(tb, port, listen):
    """fetch_from_mn over IPv4 (up1's address port port, MN's server on listen) with ISP1's link
    to CN at MTU 1280 (CN's own at 1500): MN learns the path MTU only from ISP1's
    'fragmentation needed' with the quote translated back to its own connection, and the
    1 MB arrives only if it did.  The MTU and MN's route cache are put back even on failure."""
    peer(tb, "mn", "reach", "198.51.100.1", "1")
    tb.run("mn", "ip", "route", "flush", "cache")
    tb.run("isp1", "ip", "link", "set", "eth1", "mtu", "1280")
    try:
        fetch_from_mn(tb, "::ffff:198.18.1.2", port, listen)
        routes = [tb.run("mn", "ip", "-4", "route", "get", a) for a in ("198.18.11.2", "198.51.100.1")]
        assert any("mtu 1280" in x for x in routes), routes
    finally:
        tb.run("isp1", "ip", "link", "set", "eth1", "mtu", "1500")
        tb.run("mn", "ip", "route", "flush", "cache")


def test_a_tcp_port_forward_over_ipv4_through_the_nat(bed, tmp_path):
    """The same server forwarded over IPv4: CN connects to up1's address (198.18.1.2) port
    8443, mmr sends it to MN (192.168.1.10) and MN's answers leave with up1's address; 1 MB
    hash-checked.  The kernel stays out of it (the guard: no reset from the router)."""
    with running(bed, policy(tmp_path, extra=FORWARD.replace(ISP_MN_ADDR, "192.168.1.10"))):
        peer(bed, "mn", "reach", "198.51.100.1", "1")          # mmr learns MN's MAC
        fetch_from_mn(bed, "::ffff:198.18.1.2", 8443, 8443)
        assert drops(bed)["nat_unsolicited"] == 0


FORWARD_8080 = """
[[forward]]
proto = "tcp"
port = 8080
to = "192.168.1.10"
to_port = 80
"""


def test_a_tcp_port_forward_to_another_port(bed, tmp_path):
    """External 8080 -> MN (192.168.1.10) port 80: CN fetches 1 MB from up1's address port
    8080 (MN's server on 80 sends it) and sends MN 1 MB (MN answers its length and SHA-256),
    both hash-checked; MN's answers leave from 8080 (else CN's connection would not take
    them).  mmr status shows the forward's to_port."""
    with running(bed, policy(tmp_path, extra=FORWARD_8080)):
        peer(bed, "mn", "reach", "198.51.100.1", "1")          # mmr learns MN's MAC
        fetch_from_mn(bed, "::ffff:198.18.1.2", 8080, 80)
        transfer(bed, "cn", "mn", "198.18.1.2", 8080, 1_000_000, "192.168.1.10", listen=80)
        st = json.loads(subprocess.run(in_ns(bed, "mmr", "python3", "-m", "engine", "status", "--json"),
                                       capture_output=True, text=True, timeout=30).stdout)
        assert st["drops"]["nat_unsolicited"] == 0
        assert [(f["port"], f["to"], f["to_port"]) for f in st["edge"]["forwards"]] == [("8080-8080", "192.168.1.10", 80)]


def test_path_mtu_discovery_of_a_server_forwarded_to_another_port(bed, tmp_path):
    """As below, with the server on MN port 80 behind external 8080: ISP1's 'fragmentation
    needed' quotes up1's address and port 8080; MN's kernel takes it only when the quote
    names its own connection (192.168.1.10 port 80), so the 1 MB arrives only if mmr
    translated the quoted port too."""
    with running(bed, policy(tmp_path, extra=FORWARD_8080)):
        fetch_over_a_1280_link(bed, 8080, 80)


def test_path_mtu_discovery_of_a_forwarded_server(bed, tmp_path):
    """ISP1's link to CN at MTU 1280 (CN's own at 1500): the server on MN sends 1 MB over the
    forwarded connection; ISP1's 'fragmentation needed' about MN's segments (to up1's
    address, quoting its port 8443) reaches MN with the quote restored (MN's path MTU to CN
    becomes 1280), and every byte arrives."""
    with running(bed, policy(tmp_path, extra=FORWARD.replace(ISP_MN_ADDR, "192.168.1.10"))):
        fetch_over_a_1280_link(bed, 8443, 8443)


def test_a_tcp_port_forward_over_ipv6(bed, tmp_path):
    """A server on MN port 8443, forwarded: CN connects to MN's outside address (NPTv6) and
    fetches 1 MB, hash-checked; without the [[forward]] the connection does not get in (the
    SYNs are dropped and counted)."""
    with running(bed, policy(tmp_path, extra=FORWARD)):
        peer(bed, "mn", "reach", CN_ADDR, "1")                 # mmr learns MN's MAC
        fetch_from_mn(bed, MN_OUT, 8443, 8443)
    with running(bed, policy(tmp_path)):
        before = drops(bed)["edge_unsolicited"]
        srv = start_peer(bed, "mn", "tcp-serve", 8443, 1000)
        code = ("import socket; c = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); c.settimeout(2)\n"
                f"try:\n    c.connect(('{MN_OUT}', 8443)); print('connected')\nexcept OSError:\n    print('refused')")
        r = subprocess.run(in_ns(bed, "cn", "python3", "-c", code), capture_output=True, text=True, timeout=30)
        srv.kill()
        srv.wait()
        assert r.stdout.strip() == "refused", r.stdout + r.stderr
        assert drops(bed)["edge_unsolicited"] > before
