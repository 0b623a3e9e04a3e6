"""NPTv6 onto the uplink's own on-link /64 with proxy neighbour discovery, live (issue 11):
the ISP gives the MMR's uplink one on-link /64 and routes nothing else to it, as most ISPs
do with SLAAC or DHCPv6.  mmr run with nat6 = "npt" and npt_prefix left at its default
("auto") maps the ULA LAN onto that /64 and answers the ISP router's neighbour
solicitations for the translated LAN hosts.  The kernel's default offloads stay on.

    <p>mn eth0 ---- lan0 <p>mmr up1 ---- eth0 <p>isp eth1 ---- eth1 <p>cn (lo: 2001:db8:ff::1)
       fd00:1::10/64         2001:db8:a1::2/64   2001:db8:a1::1/64, fe80::1 (on-link only, BCP 38)
"""
import ipaddress
import json
import subprocess
import sys
import time

import pytest

from engine.ref.nat import Npt66Ref
from engine.testbed import Topology
from netlab import ROOT, in_ns, make_testbed, peer, running_mmr, start_peer

pytestmark = pytest.mark.privileged

CN = "2001:db8:ff::1"
MN = "fd00:1::10"
LAN = ipaddress.ip_network("fd00:1::/64")
UPLINK = ipaddress.ip_network("2001:db8:a1::/64")
RENUMBERED = ipaddress.ip_network("2001:db8:a1:1::/64")

ONLINK = Topology(
    ("mn", "mmr", "isp", "cn"),
    [("mn", "eth0", "mmr", "lan0"), ("mmr", "up1", "isp", "eth0"), ("isp", "eth1", "cn", "eth1")],
    {"mn": [("eth0", "fd00:1::10/64")],
     "mmr": [("lan0", "fd00:1::1/64"), ("up1", "2001:db8:a1::2/64"), ("up1", "198.18.1.2/24")],
     "isp": [("eth0", "fe80::1/64"), ("eth0", "2001:db8:a1::1/64"), ("eth0", "2001:db8:a1:1::1/64"),
             ("eth0", "198.18.1.1/24"),
             ("eth1", "2001:db8:c1::1/64")],
     "cn": [("eth1", "2001:db8:c1::2/64"), ("lo", "2001:db8:ff::1/128")]},
    {"mn": [["-6", "route", "add", "default", "via", "fd00:1::1"]],
     # the default route an RA installs: via the ISP router's link-local address
     "mmr": [["-6", "route", "add", "default", "via", "fe80::1", "dev", "up1"]],
     # the ISP: its customer link's /64s on-link, CN routed; no route to anything behind the MMR
     "isp": [["-6", "route", "add", "2001:db8:ff::1/128", "via", "2001:db8:c1::2"]],
     "cn": [["-6", "route", "add", "2001:db8:a1::/48", "via", "2001:db8:c1::1"]]},
    ("mmr", "isp"), (),
    ("mmr", CN),
    nft={"isp": """table inet bcp38 {
    chain forward {
        type filter hook forward priority 0; policy accept;
        iifname "eth0" ip6 saddr != 2001:db8:a1::/48 counter drop comment "bcp38"
    }
}
"""},
)

POLICY = """[engine]
lan = "lan0"

[[uplink]]
name = "isp"
device = "up1"
nat6 = "npt"
"""


@pytest.fixture(scope="module")
def bed():
    with make_testbed("nptl", ONLINK) as tb:
        yield tb


def translated(addr: str, outer=UPLINK) -> str:
    """MN's address as NPTv6 maps it (the reference translator, not the code under test)."""
    r = Npt66Ref(1)
    r.set_prefixes(0, LAN, outer)
    return str(r.address(0, addr, True))


def running(tb, tmp_path):
    p = tmp_path / "onlink.toml"
    p.write_text(POLICY)
    return running_mmr(tb, "mmr", "run", "forwarding", "--config", str(p))


def status(tb) -> dict:
    p = subprocess.run(in_ns(tb, "mmr", sys.executable, "-m", "engine", "status", "--json"),
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def reaches(tb, addr, tries=3) -> bool:
    return any(peer(tb, "mn", "reach", addr, "1").returncode == 0 for _ in range(tries))


def probe(tb, target, src="2001:db8:a1::1", wait=1.0) -> list:
    p = subprocess.run(in_ns(tb, "isp", sys.executable, "tests/ndprobe.py", "eth0", src, target, wait),
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["answers"]


def mac_of(tb, node, dev) -> str:
    out = subprocess.run(in_ns(tb, node, "cat", f"/sys/class/net/{dev}/address"), capture_output=True,
                         text=True, check=True).stdout
    return out.strip().replace(":", "")


def isp_neighbour(tb, addr) -> str:
    return subprocess.run(in_ns(tb, "isp", "ip", "-6", "neigh", "show", "to", addr, "dev", "eth0"),
                          capture_output=True, text=True).stdout


def test_the_ula_lan_reaches_cn_over_the_uplinks_own_prefix(bed, tmp_path):
    mn_out = translated(MN)
    up_mac = mac_of(bed, "mmr", "up1")
    with running(bed, tmp_path) as (_, lines):
        text = "".join(lines)
        assert f"maps {LAN} to {UPLINK} (NPTv6, the uplink's own prefix)" in text, text
        assert "proxy neighbour discovery" in text, text
        assert reaches(bed, CN)
        srv = start_peer(bed, "cn", "tcp-serve", 7302, 2_000_000)
        r = peer(bed, "mn", "tcp-fetch", CN, 7302, 2_000_000, timeout=60)
        srv.kill()
        srv.wait()
        assert json.loads(r.stdout) == {"bytes": 2_000_000, "ok": True}, r.stdout + r.stderr
        # the ISP's router resolved MN's translation to the MMR uplink's MAC: our answer
        entry = isp_neighbour(bed, mn_out)
        assert up_mac in entry.replace(":", "") and "FAILED" not in entry, entry
        st = status(bed)["translation"]["uplinks"]["isp"]
        assert st["npt"] == f"{LAN} <-> {UPLINK}", st
        assert st["npt_avoided"][0] == "2001:db8:a1::2", st            # the router's own first
        assert st["proxy_nd"]["answered"] >= 1, st
        # a solicitation of the translation: one answer, ours, Solicited set, Override clear
        got = probe(bed, mn_out)
        assert len(got) == 1 and got[0]["mac"] == up_mac and got[0]["tlla"] == up_mac, got
        assert got[0]["flags"] == 0b010 and got[0]["checksum_ok"], got
        # duplicate address detection of the translation: defended, to all-nodes, Solicited clear
        dad = probe(bed, mn_out, src="::")
        assert len(dad) == 1 and dad[0]["mac"] == up_mac and dad[0]["dst"] == "ff02::1", dad
        assert dad[0]["eth_dst"] == "333300000001" and dad[0]["flags"] == 0 and dad[0]["checksum_ok"], dad
        # and for addresses that are no translation of a LAN host mmr knows: none from mmr
        for target in ("2001:db8:a1::77", translated("fd00:1::99")):
            assert [a for a in probe(bed, target) if a["mac"] == up_mac] == [], target
        # the router's own address on the link is its kernel's to answer (Override set), not mmr's
        own = probe(bed, "2001:db8:a1::2")
        assert len(own) == 1 and own[0]["flags"] & 0b001, own
        assert status(bed)["translation"]["uplinks"]["isp"]["proxy_nd"]["ignored"] >= 2


def test_a_renumbered_uplink_is_followed_and_without_a_prefix_ipv6_is_held(bed, tmp_path):
    """The uplink's /64 goes, its IPv4 address stays (IPv6 from the LAN dropped and counted,
    not sent untranslated); a new prefix comes as DHCPv6 gives it (a /128 address, the
    on-link /64 a route): NPT maps onto that /64 and the proxy answers for the new
    translation."""
    up_mac = mac_of(bed, "mmr", "up1")
    with running(bed, tmp_path) as (proc, _):
        assert reaches(bed, CN)
        bed.run("mmr", "ip", "-6", "addr", "del", "2001:db8:a1::2/64", "dev", "up1")
        held = None
        for _ in range(50):
            held = status(bed)["translation"]["uplinks"]["isp"]
            if "npt_held" in held:
                break
            time.sleep(0.1)
        assert "no global IPv6 address" in held.get("npt_held", ""), held
        before = status(bed)["counters"]
        assert not reaches(bed, CN, tries=1)
        after = status(bed)["counters"]
        assert after["nat_no_address"] > before["nat_no_address"], \
            {k: v - before[k] for k, v in after.items() if v != before[k]}
        # as DHCPv6 gives it: a /128 address, and the RA's on-link /64 as a route on the device
        bed.run("mmr", "ip", "-6", "addr", "add", "2001:db8:a1:1::2/128", "dev", "up1", "nodad")
        bed.run("mmr", "ip", "-6", "route", "add", "2001:db8:a1:1::/64", "dev", "up1")
        st = None
        for _ in range(50):
            st = status(bed)["translation"]["uplinks"]["isp"]
            if st.get("npt") == f"{LAN} <-> {RENUMBERED}":
                break
            time.sleep(0.1)
        assert st.get("npt") == f"{LAN} <-> {RENUMBERED}", st
        assert reaches(bed, CN)
        new = translated(MN, RENUMBERED)
        assert up_mac in isp_neighbour(bed, new).replace(":", "")
        got = probe(bed, new, src="2001:db8:a1:1::1")
        assert len(got) == 1 and got[0]["mac"] == up_mac, got
    bed.run("mmr", "ip", "-6", "route", "del", "2001:db8:a1:1::/64", "dev", "up1")
    bed.run("mmr", "ip", "-6", "addr", "del", "2001:db8:a1:1::2/128", "dev", "up1")
    bed.run("mmr", "ip", "-6", "addr", "add", "2001:db8:a1::2/64", "dev", "up1", "nodad")
