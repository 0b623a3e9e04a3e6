"""Resolvers pinned to their uplink (RFC 6419 2.3.1: a resolver is asked over the network that
gave it), live in the ISP testbed: a private LAN behind ISP1 (Ethernet) and ISP2 (an L3
link), both translating (NAPT44, NPTv6) and dropping foreign sources.  CN stands in for the
resolvers (a UDP echo on port 53 answers like one); the source address CN sees says which
ISP carried the exchange.  The kernel's default offloads stay on."""
import ipaddress
import json
import subprocess
import time

import pytest

from engine.testbed import ISP, ISP_CN_ADDR4, CN_ADDR
from netlab import in_ns, make_testbed, peer, running_mmr, start_peer

pytestmark = pytest.mark.privileged

CN4 = "::ffff:" + ISP_CN_ADDR4


def policy(tmp_path, metrics=(10, 20), dns1="", dns2="", engine=""):
    p = tmp_path / "dns.toml"
    p.write_text(f"""[engine]
lan = "lan0"
{engine}
[[uplink]]
name = "isp1"
device = "up1"
nat6 = "npt"
npt_prefix = "2001:db8:a1:100::/64"
probe_targets = ["198.18.1.1"]
metric = {metrics[0]}
{dns1}
[[uplink]]
name = "isp2"
device = "up2"
nat6 = "npt"
npt_prefix = "2001:db8:a2:100::/64"
probe_targets = ["198.18.2.1"]
metric = {metrics[1]}
{dns2}
""")
    return str(p)


@pytest.fixture(scope="module")
def bed():
    with make_testbed("dns", ISP) as tb:
        yield tb


def status(tb) -> dict:
    p = subprocess.run(in_ns(tb, "mmr", "python3", "-m", "engine", "status", "--json"), capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def ask(tb, dst, n=5) -> tuple[int, set]:
    """A DNS-like exchange MN -> dst:53 from a fresh port (a new flow): (answered, the source
    addresses CN saw)."""
    srv = start_peer(tb, "cn", "echo-server", 53, 10, dst)
    r = peer(tb, "mn", "echo-client", dst, 53, n)
    srv.terminate()
    seen = json.loads(srv.communicate(timeout=10)[0].strip().splitlines()[-1])["sources"]
    return json.loads(r.stdout)["answered"], {str(ipaddress.ip_address(s).ipv4_mapped or s) for s in seen}


def warm(tb):
    for dst in (CN_ADDR, ISP_CN_ADDR4):       # mmr learns MN's MAC on the first reply
        peer(tb, "mn", "reach", dst, "1")


def isp_of(sources) -> set:
    out = set()
    for s in sources:
        a = ipaddress.ip_address(s)
        out.add("isp1" if a == ipaddress.ip_address("198.18.1.2") or a in ipaddress.ip_network("2001:db8:a1:100::/64")
                else "isp2" if a == ipaddress.ip_address("198.18.2.2") or a in ipaddress.ip_network("2001:db8:a2:100::/64")
                else s)
    return out


def test_a_configured_resolver_goes_out_of_its_uplink_not_the_metrics(bed, tmp_path):
    """ISP1 is the primary (lower metric); ISP2's resolver (CN's IPv4 address here) is asked
    through ISP2 all the same, with ISP2's address; CN's IPv6 address, no resolver, through
    ISP1.  While ISP2 is down the resolver is not asked through ISP1 (dropped, counted);
    mmr status lists it."""
    with running_mmr(bed, "mmr", "run", "forwarding", "--config",
                     policy(tmp_path, dns2=f'dns = ["{ISP_CN_ADDR4}"]')):
        warm(bed)
        st = status(bed)
        assert st["resolvers"] == {"isp1": [], "isp2": [{"address": ISP_CN_ADDR4, "from": "config",
                                                         "expires_s": None}]}
        answered, seen = ask(bed, CN4)
        assert answered >= 4 and isp_of(seen) == {"isp2"}, seen
        answered, seen = ask(bed, CN_ADDR)
        assert answered >= 4 and isp_of(seen) == {"isp1"}, seen
        text = subprocess.run(in_ns(bed, "mmr", "python3", "-m", "engine", "status"), capture_output=True,
                              text=True, timeout=30).stdout
        assert f"resolvers: isp2 {ISP_CN_ADDR4} (config)" in text, text
        r = subprocess.run(in_ns(bed, "mmr", "python3", "-m", "engine", "uplink", "isp2", "down"),
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        try:
            before = status(bed)["drops"]["no_uplink"]
            answered, seen = ask(bed, CN4, n=3)
            assert answered == 0 and seen == set()
            assert status(bed)["drops"]["no_uplink"] >= before + 3
        finally:
            subprocess.run(in_ns(bed, "mmr", "python3", "-m", "engine", "uplink", "isp2", "auto"),
                           capture_output=True, text=True, timeout=30)


def resolvers_become(tb, name, want, seconds=8.0):
    end = time.monotonic() + seconds
    while [r["address"] for r in status(tb)["resolvers"][name]] != want:
        assert time.monotonic() < end, status(tb)["resolvers"]
        time.sleep(0.1)


@pytest.mark.parametrize("workers", [1, 2])
def test_rdnss_from_a_router_advertisement_is_learned_and_pinned(bed, tmp_path, workers):
    """ISP2 is the primary now; ISP1's router advertises CN's IPv6 address as its resolver
    (RDNSS, RFC 8106) on up1, where the MMR, a router, accepts RAs (accept_ra = 2): mmr pins
    it to ISP1 (in every worker), asks it through ISP1, keeps it across a reload, lets the
    router withdraw it (lifetime 0) and forgets it when its lifetime runs out."""
    was = bed.run("mmr", "sysctl", "-n", "net.ipv6.conf.up1.accept_ra").strip()
    bed.run("mmr", "sysctl", "-qw", "net.ipv6.conf.up1.accept_ra=2")
    try:
        with running_mmr(bed, "mmr", "run", "forwarding", "--config",
                         policy(tmp_path, metrics=(20, 10), engine=f"workers = {workers}")):
            warm(bed)
            answered, seen = ask(bed, CN_ADDR)
            assert answered >= 4 and isp_of(seen) == {"isp2"}, seen            # the metric's choice
            r = peer(bed, "isp1", "ra-send", "eth0", "600", CN_ADDR)
            assert r.returncode == 0, r.stderr
            resolvers_become(bed, "isp1", [CN_ADDR])
            (got,) = status(bed)["resolvers"]["isp1"]
            assert got["from"].startswith("ra fe80::") and 0 < got["expires_s"] <= 600, got
            for _ in range(2):
                answered, seen = ask(bed, CN_ADDR)
                assert answered >= 4 and isp_of(seen) == {"isp1"}, seen        # pinned to ISP1
            r = subprocess.run(in_ns(bed, "mmr", "python3", "-m", "engine", "reload"), capture_output=True,
                               text=True, timeout=30)
            assert r.returncode == 0, r.stdout + r.stderr
            assert [x["address"] for x in status(bed)["resolvers"]["isp1"]] == [CN_ADDR]   # learned: kept
            answered, seen = ask(bed, CN_ADDR)
            assert answered >= 4 and isp_of(seen) == {"isp1"}, seen
            peer(bed, "isp1", "ra-send", "eth0", "0", CN_ADDR)                 # withdrawn
            resolvers_become(bed, "isp1", [])
            answered, seen = ask(bed, CN_ADDR)
            assert answered >= 4 and isp_of(seen) == {"isp2"}, seen
            peer(bed, "isp1", "ra-send", "eth0", "2", CN_ADDR)                 # a short lifetime: it goes
            resolvers_become(bed, "isp1", [CN_ADDR])
            resolvers_become(bed, "isp1", [])
            answered, seen = ask(bed, CN_ADDR)
            assert answered >= 4 and isp_of(seen) == {"isp2"}, seen
    finally:
        bed.run("mmr", "sysctl", "-qw", f"net.ipv6.conf.up1.accept_ra={was}", check=False)
