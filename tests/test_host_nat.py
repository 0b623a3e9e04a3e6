"""Host mode on ordinary networks (issue 11 item 7), live: the hostnat testbed, where R1 and
R2 route nothing to vi0's prefix and drop foreign sources (BCP 38) and the peer knows only the
links' prefixes.  mmr host translates vi0's IPv4 address to each interface's own (nat =
"auto": host mode translates); the host's own sockets on the interfaces keep working beside
it.  The kernel's default offloads stay on."""
import json
import subprocess
import sys
import time

import pytest

from engine.testbed import HOSTNAT, HOSTNAT_PEER4
from netlab import ROOT, in_ns, make_testbed, peer, running_mmr, start_peer

pytestmark = pytest.mark.privileged

VI4 = "198.18.99.10"
IFACE4 = {"i1": "198.18.21.2", "i2": "198.18.22.2"}
PEER_DEV = {"i1": "eth1", "i2": "eth2"}          # where the peer sees what came via each interface
PINNED = {"i1": HOSTNAT_PEER4[0], "i2": HOSTNAT_PEER4[1]}
FREE = HOSTNAT_PEER4[2]

POLICY = f"""
[host]
vi = "vi0"
addresses = ["{VI4}/32"]
routes = ["default"]

[[uplink]]
name = "i1"
device = "i1"
probe_targets = ["198.18.21.1"]

[[uplink]]
name = "i2"
device = "i2"
probe_targets = ["198.18.22.1"]

[[rule]]
dst = "{PINNED['i1']}/32"
uplink = "i1"

[[rule]]
dst = "{PINNED['i2']}/32"
uplink = "i2"
"""


@pytest.fixture(scope="module")
def bed():
    with make_testbed("hn", HOSTNAT) as tb:
        yield tb


def policy(tmp_path, text=POLICY):
    p = tmp_path / "hostnat.toml"
    p.write_text(text)
    return str(p)


def running(tb, path):
    return running_mmr(tb, "host", "host", "vi0 up", "--config", path)


def status(tb) -> dict:
    p = subprocess.run(in_ns(tb, "host", sys.executable, "-m", "engine", "status", "--json"),
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def flows_to(tb, dport) -> set:
    p = subprocess.run(in_ns(tb, "host", sys.executable, "-m", "engine", "flows", "--json"),
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    return {f["uplink"] for f in json.loads(p.stdout)["flows"] if f["dport"] == dport}


def kernel_range(tb) -> tuple[int, int]:
    lo, hi = tb.run("host", "cat", "/proc/sys/net/ipv4/ip_local_port_range").split()
    return int(lo), int(hi)


def test_compiled_modules_are_loaded():
    from engine import _forward, _nat, _tun

    assert all(m.__file__.endswith(".so") for m in (_forward, _nat, _tun))


def test_without_mmr_the_vi_address_is_lost(bed):
    """The testbed is what it says: a packet from vi0's prefix dies at the router (BCP 38),
    while the interfaces' own addresses reach the peer."""
    assert peer(bed, "host", "reach", PINNED["i1"], "1").returncode == 0
    bed.run("host", "ip", "addr", "add", f"{VI4}/32", "dev", "lo")
    try:
        out = bed.run("host", "ping", "-4", "-c", "2", "-i", "0.2", "-W", "1", "-I", VI4, PINNED["i1"], check=False)
        assert out is None or " 100% packet loss" in out, out
        assert "bcp38" in bed.run("r1", "nft", "list", "table", "inet", "bcp38")
        counted = bed.run("r1", "nft", "list", "table", "inet", "bcp38")
        assert "packets 0 " not in counted.split("ip saddr")[1].splitlines()[0], counted
    finally:
        bed.run("host", "ip", "addr", "del", f"{VI4}/32", "dev", "lo")


@pytest.mark.parametrize("iface", ["i1", "i2"])
def test_ping_udp_and_tcp_through_vi0_over_each_interface(bed, tmp_path, iface):
    dst = PINNED[iface]
    with running(bed, policy(tmp_path)) as (_, lines):
        text = "".join(lines)
        assert f"uplink {iface} translates IPv4 to {IFACE4[iface]}" in text, text
        out = bed.run("host", "ping", "-4", "-c", "3", "-i", "0.2", "-W", "2", dst, check=False)
        assert out is not None and " 0% packet loss" in out, out
        # UDP: the peer sees the interface's address, never vi0's
        sink = start_peer(bed, "peer", "udp-sink", 7501, 2)
        assert peer(bed, "host", "udp-send", "::ffff:" + dst, 7501, 10, -1, -1).returncode == 0
        got = [json.loads(x) for x in sink.communicate(timeout=10)[0].splitlines() if x.startswith("{")]
        assert len(got) >= 9
        assert {g["src"] for g in got} == {"::ffff:" + IFACE4[iface]}
        assert {g["dev"] for g in got} == {PEER_DEV[iface]}
        # a UDP exchange and a TCP transfer (the peer sends, hash-checked at the host)
        srv = start_peer(bed, "peer", "echo-server", 7502, 6, "::ffff:" + dst)
        r = json.loads(peer(bed, "host", "echo-client", "::ffff:" + dst, 7502, 20).stdout)
        srv.kill()
        srv.wait()
        assert r["answered"] >= 19, r
        srv = start_peer(bed, "peer", "tcp-serve", 7503, 3_000_000)
        f = json.loads(peer(bed, "host", "tcp-fetch", "::ffff:" + dst, 7503, 3_000_000, timeout=60).stdout)
        srv.wait(timeout=10)
        assert f["ok"] and f["bytes"] == 3_000_000, f
        st = status(bed)
        t = st["translation"]["uplinks"][iface]
        assert t["translating"] and t["address"] == IFACE4[iface], t
        assert t["mappings"]["tcp"] >= 1 and t["mappings"]["udp"] >= 2 and t["mappings"]["icmp"] >= 1, t
        assert flows_to(bed, 7503) == {iface}


def test_the_hosts_own_sockets_on_the_interfaces_keep_working(bed, tmp_path):
    """Beside vi0's translated flows, the host's own sockets bound to i1 and i2 (source
    ports from the kernel's range, never a mapping's) reach the peer; their packets pass mmr
    untouched both ways."""
    lo, hi = kernel_range(bed)
    with running(bed, policy(tmp_path)):
        before = status(bed)["counters"]["kernel"]
        servers = [start_peer(bed, "peer", "tcp-serve", port, 2_000_000) for port in (7511, 7512, 7513)]
        fetch = [subprocess.Popen(in_ns(bed, "host", sys.executable, "-m", "engine.peers", "tcp-fetch",
                                        "::ffff:" + FREE, port, 2_000_000, *dev),
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT)
                 for port, dev in ((7511, ("i1",)), (7512, ("i2",)), (7513, ()))]
        res = [json.loads(p.communicate(timeout=60)[0]) for p in fetch]
        for s in servers:
            s.wait(timeout=10)
        assert all(r["ok"] and r["bytes"] == 2_000_000 for r in res), res
        assert all(lo <= r["port"] <= hi for r in res[:2]), (res, lo, hi)
        assert flows_to(bed, 7513) and not flows_to(bed, 7511) and not flows_to(bed, 7512)
        srv = start_peer(bed, "peer", "echo-server", 7514, 8, "::ffff:" + FREE)
        p = peer(bed, "host", "echo-client", "::ffff:" + FREE, 7514, 10, 0, "i2")
        srv.kill()
        srv.wait()
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout)
        assert r["answered"] == 10 and lo <= r["port"] <= hi, r
        assert status(bed)["counters"]["kernel"] > before       # the replies: the kernel's, through mmr's tap
        # a server on the host (bound to no device): its answers from i1's address are routed
        # via vi0 by the host's kernel, and leave by i1 as they are
        srv = start_peer(bed, "host", "tcp-serve", 873, 1_000_000)
        f = json.loads(peer(bed, "peer", "tcp-fetch", "::ffff:" + IFACE4["i1"], 873, 1_000_000, timeout=60).stdout)
        srv.wait(timeout=10)
        assert f["ok"] and f["bytes"] == 1_000_000, f


def test_failover_moves_a_translated_udp_flow(bed, tmp_path):
    """A UDP exchange from vi0 to an unpinned address; its interface goes down: the flow
    moves to the other interface, its translation changes (counted as moved) and the
    exchange goes on."""
    with running(bed, policy(tmp_path)):
        srv = start_peer(bed, "peer", "echo-server", 7521, 14, "::ffff:" + FREE)
        client = subprocess.Popen(in_ns(bed, "host", sys.executable, "-m", "engine.peers", "echo-client",
                                        "::ffff:" + FREE, 7521, 200), stdout=subprocess.PIPE, text=True, cwd=ROOT)
        time.sleep(1.0)
        first = flows_to(bed, 7521)
        assert len(first) == 1, first
        (was,) = first
        other = "i2" if was == "i1" else "i1"
        mapped_before = status(bed)["translation"]["uplinks"][other]["mappings"]["udp"]
        bed.run("host", "ip", "link", "set", was, "down")
        try:
            time.sleep(1.0)
            moved = status(bed)
            assert flows_to(bed, 7521) == {other}
            out, _ = client.communicate(timeout=30)
        finally:
            bed.run("host", "ip", "link", "set", was, "up")
            for rt in HOSTNAT.routes["host"]:
                bed.run("host", "ip", *rt, check=False)
            srv.kill()
            srv.wait()
        r = json.loads(out)
        assert r["answered"] >= 150, (first, r)                  # a short gap while the link goes
        assert moved["translation"]["moved"] >= 1, moved["translation"]
        assert moved["translation"]["uplinks"][other]["mappings"]["udp"] > mapped_before
        assert moved["moved_flows"] >= 1


PROBE = """
import socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(1.5)
try:
    s.connect((addr, port))
    print("connected")
except socket.timeout:
    print("silence")
except ConnectionRefusedError:
    print("refused")
"""


def test_unsolicited_packets_to_a_mapping_port_are_dropped_and_counted(bed, tmp_path):
    """From the peer to i1's address: a mapping's port (none open) is dropped and counted,
    and the host's kernel never sees it (no reset comes back); a port of the kernel's range
    stays the kernel's (it refuses: nothing listens there)."""
    lo, hi = kernel_range(bed)
    mapping_port = 1024 if lo > 1024 else hi + 1
    with running(bed, policy(tmp_path)):
        before = status(bed)["drops"]["nat_unsolicited"]

        def probe(port):
            p = subprocess.run(in_ns(bed, "peer", sys.executable, "-c", PROBE, IFACE4["i1"], port),
                               capture_output=True, text=True, timeout=30)
            return p.stdout.strip()

        assert probe(mapping_port) == "silence"
        assert probe(lo + 7) == "refused"
        p = subprocess.run(in_ns(bed, "peer", sys.executable, "-c",
                                 "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                                 f"[s.sendto(b'x', ('{IFACE4['i1']}', {mapping_port + 1})) for _ in range(3)]"),
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        time.sleep(0.3)
        after = status(bed)["drops"]["nat_unsolicited"]
        assert after - before >= 4, (before, after)                # the SYNs (and resends) and 3 datagrams
        guard = bed.run("host", "nft", "list", "table", "inet", "mmrhost")
        assert "@nat4" in guard and IFACE4["i1"] in guard, guard


def test_npt_is_refused_in_host_mode(bed, tmp_path):
    text = POLICY.replace('probe_targets = ["198.18.21.1"]',
                          'probe_targets = ["198.18.21.1"]\nnat6 = "npt"\nnpt_prefix = "2001:db8:b1:100::/64"')
    p = subprocess.run(in_ns(bed, "host", sys.executable, "-m", "engine", "host", "--config", policy(tmp_path, text)),
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "uplink[0].nat6" in p.stderr and "host mode" in p.stderr, p.stderr
    assert "vi0" not in bed.run("host", "ip", "link")


def test_nat_none_sends_the_vi_address_and_bcp38_drops_it(bed, tmp_path):
    """The operator's way to say "the network routes vi0's prefix": nat = "none" sends vi0's
    address as it is; here nothing routes it, so it is lost (what "auto" avoids)."""
    text = POLICY.replace('device = "i1"\n', 'device = "i1"\nnat = "none"\n')
    with running(bed, policy(tmp_path, text)) as (_, lines):
        assert "uplink i1 translates" not in "".join(lines)
        out = bed.run("host", "ping", "-4", "-c", "2", "-i", "0.2", "-W", "1", PINNED["i1"], check=False)
        assert out is None or " 100% packet loss" in out, out
        out = bed.run("host", "ping", "-4", "-c", "2", "-i", "0.2", "-W", "2", PINNED["i2"], check=False)
        assert out is not None and " 0% packet loss" in out, out
        assert status(bed)["translation"]["uplinks"]["i1"]["translating"] is False


VI6 = "2001:db8:99::10"           # routed by nobody: only NAPT66 gets its packets anywhere
PEER6 = "2001:db8:ee::1"
IFACE6 = {"i1": "2001:db8:b1::2", "i2": "2001:db8:b2::2"}


@pytest.mark.parametrize("iface", ["i1", "i2"])
def test_ipv6_through_vi0_with_napt66_over_each_interface(bed, tmp_path, iface):
    """nat6 = "masquerade": vi0's IPv6 leaves each interface with the interface's own address
    (what R1 and R2's BCP 38 filters let through, and the peer routes back): ping, UDP (the
    peer sees the interface's address), a UDP exchange, TCP hash-checked."""
    text = POLICY.replace(f'{VI4}/32"]', f'{VI4}/32", "{VI6}/128"]')
    for name in ("i1", "i2"):
        text = text.replace(f'device = "{name}"\n', f'device = "{name}"\nnat6 = "masquerade"\n')
    text += f'\n[[rule]]\ndst = "{PEER6}/128"\nuplink = "{iface}"\n'
    with running(bed, policy(tmp_path, text)) as (_, lines):
        assert f"uplink {iface} translates IPv6 to {IFACE6[iface]} (NAPT66)" in "".join(lines)
        out = bed.run("host", "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "-I", VI6, PEER6, check=False)
        assert out is not None and " 0% packet loss" in out, out
        sink = start_peer(bed, "peer", "udp-sink", 7701, 2)
        assert peer(bed, "host", "udp-send", PEER6, 7701, 10, -1, -1).returncode == 0
        got = [json.loads(x) for x in sink.communicate(timeout=10)[0].splitlines() if x.startswith("{")]
        assert len(got) >= 9 and {g["src"] for g in got} == {IFACE6[iface]}, got
        srv = start_peer(bed, "peer", "echo-server", 7702, 6, PEER6)
        r = json.loads(peer(bed, "host", "echo-client", PEER6, 7702, 20).stdout)
        srv.kill()
        srv.wait()
        assert r["answered"] >= 19, r
        srv = start_peer(bed, "peer", "tcp-serve", 7703, 3_000_000)
        f = json.loads(peer(bed, "host", "tcp-fetch", PEER6, 7703, 3_000_000, timeout=60).stdout)
        srv.wait(timeout=10)
        assert f["ok"] and f["bytes"] == 3_000_000, f
        t = status(bed)["translation"]["uplinks"][iface]
        assert t["address6"] == IFACE6[iface] and t["mappings6"]["udp"] >= 2 and t["mappings6"]["tcp"] >= 1, t
        assert flows_to(bed, 7703) == {iface}
