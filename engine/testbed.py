"""The draft's section 6 testbed in network namespaces:  MN - MMR - AR1/AR2 - CN.

    <p>mn  eth0 ---- lan0  <p>mmr  up1 ---- eth0 <p>ar1 eth1 ---- eth1
                                   up2 ---- eth0 <p>ar2 eth1 ---- eth2  <p>cn  (lo: 2001:db8:ff::1)

IPv6 (and IPv4) from documentation/benchmark ranges; ARs route the LAN prefix back to the
MMR; CN reaches the LAN over both ARs (multipath); the MMR forwards by kernel routing with a
default route via AR2 until ``mmr run`` takes over.  AR1 and AR2 share a link too, and each
routes the LAN prefix over it with a higher metric: when the MMR's link to one AR goes down,
traffic from CN that reaches that AR still finds its way back (as two ISPs' access routers
of one operator would).

The links keep the kernel's default offloads (on a veth: TX checksum offload, TSO and GSO
on, so a local TCP sender hands the next hop 64 KiB super-frames with unfinished
checksums, as a VM with virtio-net does).  The sysctls set, and why: forwarding on the
routers (they are routers); no duplicate address detection (static documentation addresses,
and a second of DAD per address would only slow the tests); IPv6 addresses kept across a
link going down, as IPv4's are (the failover tests take links down and up again, which a
network manager would re-address); and on the ARs, routes over a link without carrier are
ignored, so their backup route over the AR1-AR2 link takes over.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from engine.errors import UserError
from engine.netns import namespaces, require_tools, sh, sysctl

NODES = ("mn", "mmr", "ar1", "ar2", "cn")
ENGINE_HOME = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (ns a, dev a, ns b, dev b)
LINKS = [
    ("mn", "eth0", "mmr", "lan0"),
    ("mmr", "up1", "ar1", "eth0"),
    ("mmr", "up2", "ar2", "eth0"),
    ("ar1", "eth1", "cn", "eth1"),
    ("ar2", "eth1", "cn", "eth2"),
    ("ar1", "eth2", "ar2", "eth2"),   # the ARs' own link: each is the other's way back to the MMR
]

ADDRS = {  # node: [(dev, address/len)]
    "mn": [("eth0", "2001:db8:1::10/64"), ("eth0", "192.0.2.10/24")],
    "mmr": [("lan0", "2001:db8:1::1/64"), ("lan0", "192.0.2.1/24"),
            ("up1", "2001:db8:a1::2/64"), ("up1", "198.18.1.2/24"),
            ("up2", "2001:db8:a2::2/64"), ("up2", "198.18.2.2/24")],
    "ar1": [("eth0", "2001:db8:a1::1/64"), ("eth0", "198.18.1.1/24"),
            ("eth1", "2001:db8:c1::1/64"), ("eth1", "198.18.11.1/24"),
            ("eth2", "2001:db8:12::1/64"), ("eth2", "198.18.3.1/24")],
    "ar2": [("eth0", "2001:db8:a2::1/64"), ("eth0", "198.18.2.1/24"),
            ("eth1", "2001:db8:c2::1/64"), ("eth1", "198.18.12.1/24"),
            ("eth2", "2001:db8:12::2/64"), ("eth2", "198.18.3.2/24")],
    "cn": [("eth1", "2001:db8:c1::2/64"), ("eth1", "198.18.11.2/24"),
           ("eth2", "2001:db8:c2::2/64"), ("eth2", "198.18.12.2/24"),
           ("lo", "2001:db8:ff::1/128"), ("lo", "198.51.100.1/32")],
}

ROUTES = {  # node: [ip route arguments]
    "mn": [["-6", "route", "add", "default", "via", "2001:db8:1::1"],
           ["-4", "route", "add", "default", "via", "192.0.2.1"]],
    "mmr": [["-6", "route", "add", "default", "via", "2001:db8:a2::1", "dev", "up2"],
            ["-4", "route", "add", "default", "via", "198.18.2.1"]],
    "ar1": [["-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:a1::2"],
            ["-6", "route", "add", "2001:db8:ff::1/128", "via", "2001:db8:c1::2"],
            ["-4", "route", "add", "192.0.2.0/24", "via", "198.18.1.2"],
            ["-4", "route", "add", "198.51.100.1/32", "via", "198.18.11.2"],
            ["-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:12::2", "metric", "2048"],
            ["-4", "route", "add", "192.0.2.0/24", "via", "198.18.3.2", "metric", "2048"]],
    "ar2": [["-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:a2::2"],
            ["-6", "route", "add", "2001:db8:ff::1/128", "via", "2001:db8:c2::2"],
            ["-4", "route", "add", "192.0.2.0/24", "via", "198.18.2.2"],
            ["-4", "route", "add", "198.51.100.1/32", "via", "198.18.12.2"],
            ["-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:12::1", "metric", "2048"],
            ["-4", "route", "add", "192.0.2.0/24", "via", "198.18.3.1", "metric", "2048"]],
    "cn": [["-6", "route", "add", "2001:db8:1::/64", "nexthop", "via", "2001:db8:c1::1", "dev", "eth1",
            "nexthop", "via", "2001:db8:c2::1", "dev", "eth2"],
           ["-4", "route", "add", "192.0.2.0/24", "nexthop", "via", "198.18.11.1", "dev", "eth1",
            "nexthop", "via", "198.18.12.1", "dev", "eth2"]],
}

@dataclass(frozen=True)
class Topology:
    nodes: tuple
    links: list
    addrs: dict
    routes: dict
    forwarders: tuple          # nodes that route (forwarding on)
    backup: tuple              # nodes that skip routes over links without carrier
    check: tuple               # (node, address) that must answer ping once built
    more_checks: tuple = ()    # further (node, address) pairs that must answer
    l3links: tuple = ()        # (ns a, dev a, ns b, dev b): two TUNs joined by engine.l3link
    nft: dict = field(default_factory=dict)   # node: nft script loaded once built


DRAFT = Topology(NODES, LINKS, ADDRS, ROUTES, ("mmr", "ar1", "ar2"), ("ar1", "ar2"),
                 ("mn", "2001:db8:ff::1"))

# Host mode (draft-hong-mif): a host with two physical interfaces I1, I2 through routers R1,
# R2 to a peer that routes the virtual interface's prefix 2001:db8:99::/64 back via both.
#
#   <p>host  i1 ---- eth0 <p>r1 eth1 ---- eth1  <p>peer (lo: 2001:db8:ee::1)
#            i2 ---- eth0 <p>r2 eth1 ---- eth2
#                         r1 eth2 ---- eth2 r2 (backup for each other)
HOST = Topology(
    ("host", "r1", "r2", "peer"),
    [("host", "i1", "r1", "eth0"), ("host", "i2", "r2", "eth0"), ("r1", "eth1", "peer", "eth1"),
     ("r2", "eth1", "peer", "eth2"), ("r1", "eth2", "r2", "eth2")],
    {"host": [("i1", "2001:db8:b1::2/64"), ("i2", "2001:db8:b2::2/64"),
              ("i1", "198.18.21.2/24"), ("i2", "198.18.22.2/24")],
     "r1": [("eth0", "2001:db8:b1::1/64"), ("eth1", "2001:db8:d1::1/64"), ("eth2", "2001:db8:12::1/64"),
            ("eth0", "198.18.21.1/24"), ("eth1", "198.18.31.1/24"), ("eth2", "198.18.40.1/24")],
     "r2": [("eth0", "2001:db8:b2::1/64"), ("eth1", "2001:db8:d2::1/64"), ("eth2", "2001:db8:12::2/64"),
            ("eth0", "198.18.22.1/24"), ("eth1", "198.18.32.1/24"), ("eth2", "198.18.40.2/24")],
     "peer": [("eth1", "2001:db8:d1::2/64"), ("eth2", "2001:db8:d2::2/64"), ("lo", "2001:db8:ee::1/128"),
              ("lo", "2001:db8:ee:c0::1/128"), ("eth1", "198.18.31.2/24"), ("eth2", "198.18.32.2/24"),
              ("lo", "198.51.100.9/32")]},
    {"r1": [["-6", "route", "add", "2001:db8:99::/64", "via", "2001:db8:b1::2"],
            ["-6", "route", "add", "2001:db8:ee::/48", "via", "2001:db8:d1::2"],
            ["-6", "route", "add", "2001:db8:99::/64", "via", "2001:db8:12::2", "metric", "2048"],
            ["-4", "route", "add", "198.18.99.0/24", "via", "198.18.21.2"],
            ["-4", "route", "add", "198.51.100.0/24", "via", "198.18.31.2"],
            ["-4", "route", "add", "198.18.99.0/24", "via", "198.18.40.2", "metric", "2048"]],
     "r2": [["-6", "route", "add", "2001:db8:99::/64", "via", "2001:db8:b2::2"],
            ["-6", "route", "add", "2001:db8:ee::/48", "via", "2001:db8:d2::2"],
            ["-6", "route", "add", "2001:db8:99::/64", "via", "2001:db8:12::1", "metric", "2048"],
            ["-4", "route", "add", "198.18.99.0/24", "via", "198.18.22.2"],
            ["-4", "route", "add", "198.51.100.0/24", "via", "198.18.32.2"],
            ["-4", "route", "add", "198.18.99.0/24", "via", "198.18.40.1", "metric", "2048"]],
     "peer": [["-6", "route", "add", "2001:db8:99::/64", "nexthop", "via", "2001:db8:d1::1", "dev", "eth1",
               "nexthop", "via", "2001:db8:d2::1", "dev", "eth2"],
              ["-6", "route", "add", "2001:db8:b1::/64", "via", "2001:db8:d1::1"],
              ["-6", "route", "add", "2001:db8:b2::/64", "via", "2001:db8:d2::1"],
              ["-4", "route", "add", "198.18.99.0/24", "nexthop", "via", "198.18.31.1", "dev", "eth1",
               "nexthop", "via", "198.18.32.1", "dev", "eth2"]]},
    ("r1", "r2"), ("r1", "r2"),
    ("host", "2001:db8:b2::1"),
)
HOST_VI_ADDR = "2001:db8:99::10"
PEER_ADDR = "2001:db8:ee::1"
PEER_CORP_ADDR = "2001:db8:ee:c0::1"      # the built-in host policy pins it to i2
HOST_VI_ADDR4 = "198.18.99.10"
PEER_ADDR4 = "198.51.100.9"

# Host mode on ordinary networks (issue 11 item 7): the host testbed's nodes and links, but
# R1 and R2 route nothing to the virtual interface's prefixes and drop sources outside the
# host's link at their customer port (BCP 38), and the peer knows only the links' prefixes:
# a packet from vi0's address that is not translated is lost, as in the world.  The host has
# the default routes DHCP and RA would have installed (via R1 on i1, metric 100; via R2 on
# i2, metric 200), so its own sockets reach the peer without mmr, and `gateway = "auto"`
# learns the gateways.  The peer has three IPv4 addresses: policies pin one to each interface
# and leave the third to the metric.
HOSTNAT = Topology(
    HOST.nodes, HOST.links,
    {**HOST.addrs, "peer": HOST.addrs["peer"] + [("lo", "198.51.100.19/32"), ("lo", "198.51.100.29/32")]},
    {"host": [["-4", "route", "add", "default", "via", "198.18.21.1", "dev", "i1", "metric", "100"],
              ["-6", "route", "add", "default", "via", "2001:db8:b1::1", "dev", "i1", "metric", "100"],
              ["-4", "route", "add", "default", "via", "198.18.22.1", "dev", "i2", "metric", "200"],
              ["-6", "route", "add", "default", "via", "2001:db8:b2::1", "dev", "i2", "metric", "200"]],
     "r1": [["-6", "route", "add", "2001:db8:ee::/48", "via", "2001:db8:d1::2"],
            ["-4", "route", "add", "198.51.100.0/24", "via", "198.18.31.2"]],
     "r2": [["-6", "route", "add", "2001:db8:ee::/48", "via", "2001:db8:d2::2"],
            ["-4", "route", "add", "198.51.100.0/24", "via", "198.18.32.2"]],
     "peer": [["-6", "route", "add", "2001:db8:b1::/64", "via", "2001:db8:d1::1"],
              ["-6", "route", "add", "2001:db8:b2::/64", "via", "2001:db8:d2::1"],
              ["-4", "route", "add", "198.18.21.0/24", "via", "198.18.31.1"],
              ["-4", "route", "add", "198.18.22.0/24", "via", "198.18.32.1"]]},
    ("r1", "r2"), (),
    ("host", "198.51.100.9"),
    more_checks=(("host", "2001:db8:ee::1"),),
    nft={r: f"""table inet bcp38 {{
    chain forward {{
        type filter hook forward priority 0; policy accept;
        iifname "eth0" ip saddr != {v4} counter drop comment "bcp38"
        iifname "eth0" ip6 saddr != {v6} counter drop comment "bcp38"
    }}
}}
""" for r, v4, v6 in (("r1", "198.18.21.0/24", "2001:db8:b1::/64"),
                      ("r2", "198.18.22.0/24", "2001:db8:b2::/64"))},
)
HOSTNAT_PEER4 = ("198.51.100.9", "198.51.100.19", "198.51.100.29")   # pinned to i1, to i2, free

# Two real ISPs (issue 11): MN - MMR - ISP1/ISP2 - CN.
#
#   <p>mn  eth0 ---- lan0 <p>mmr up1 ---- eth0 <p>isp1 eth1 ---- eth1 <p>cn (lo: 2001:db8:ff::1,
#                             up2 ==== eth0 <p>isp2 eth1 ---- eth2          198.51.100.1)
#
# The LAN is private: 192.168.1.0/24 and the ULA fd00:1::/64.  Each ISP gives the MMR one
# link address per family and delegates a /56 (2001:db8:a1:100::/56, 2001:db8:a2:100::/56)
# routed to it, drops sources outside its own space at its customer port (BCP 38: 198.18.1.0/24
# and 2001:db8:a1::/48 for ISP1), and CN knows only the ISPs' space: nothing routes the LAN.
# ISP2's link (====) is an L3 device, as PPPoE or an LTE modem in raw-IP mode gives a router:
# two TUN devices joined by engine/l3link.py, point-to-point addresses, no MAC header.  The
# MMR's kernel has the routes DHCP, RA and PPP would have installed (default via ISP1 on up1,
# a second default on up2 with a higher metric) and no NAT: without mmr, nothing on the LAN
# reaches CN, as on a router whose NAT is not configured.
ISP = Topology(
    ("mn", "mmr", "isp1", "isp2", "cn"),
    [("mn", "eth0", "mmr", "lan0"), ("mmr", "up1", "isp1", "eth0"), ("isp1", "eth1", "cn", "eth1"),
     ("isp2", "eth1", "cn", "eth2")],
    {"mn": [("eth0", "192.168.1.10/24"), ("eth0", "fd00:1::10/64")],
     "mmr": [("lan0", "192.168.1.1/24"), ("lan0", "fd00:1::1/64"),
             ("up1", "198.18.1.2/24"), ("up1", "2001:db8:a1::2/64"),
             ("up2", "198.18.2.2 peer 198.18.2.1/32"), ("up2", "2001:db8:a2::2/64")],
     "isp1": [("eth0", "198.18.1.1/24"), ("eth0", "2001:db8:a1::1/64"),
              ("eth1", "198.18.11.1/24"), ("eth1", "2001:db8:c1::1/64")],
     "isp2": [("eth0", "198.18.2.1 peer 198.18.2.2/32"), ("eth0", "2001:db8:a2::1/64"),
              ("eth1", "198.18.12.1/24"), ("eth1", "2001:db8:c2::1/64")],
     "cn": [("eth1", "198.18.11.2/24"), ("eth1", "2001:db8:c1::2/64"),
            ("eth2", "198.18.12.2/24"), ("eth2", "2001:db8:c2::2/64"),
            ("lo", "2001:db8:ff::1/128"), ("lo", "198.51.100.1/32")]},
    {"mn": [["-6", "route", "add", "default", "via", "fd00:1::1"],
            ["-4", "route", "add", "default", "via", "192.168.1.1"]],
     "mmr": [["-4", "route", "add", "default", "via", "198.18.1.1", "dev", "up1", "metric", "100"],
             ["-6", "route", "add", "default", "via", "2001:db8:a1::1", "dev", "up1", "metric", "100"],
             ["-4", "route", "add", "default", "dev", "up2", "metric", "200"],
             ["-6", "route", "add", "default", "dev", "up2", "metric", "200"]],
     "isp1": [["-4", "route", "add", "198.51.100.1/32", "via", "198.18.11.2"],
              ["-6", "route", "add", "2001:db8:ff::1/128", "via", "2001:db8:c1::2"],
              ["-6", "route", "add", "2001:db8:a1:100::/56", "via", "2001:db8:a1::2"]],
     "isp2": [["-4", "route", "add", "198.51.100.1/32", "via", "198.18.12.2"],
              ["-6", "route", "add", "2001:db8:ff::1/128", "via", "2001:db8:c2::2"],
              ["-6", "route", "add", "2001:db8:a2:100::/56", "dev", "eth0"]],
     "cn": [["-4", "route", "add", "198.18.1.0/24", "via", "198.18.11.1"],
            ["-6", "route", "add", "2001:db8:a1::/48", "via", "2001:db8:c1::1"],
            ["-4", "route", "add", "198.18.2.0/24", "via", "198.18.12.1"],
            ["-6", "route", "add", "2001:db8:a2::/48", "via", "2001:db8:c2::1"]]},
    ("mmr", "isp1", "isp2"), (),
    ("mmr", "2001:db8:ff::1"),
    more_checks=(("isp2", "2001:db8:a2::2"), ("isp2", "198.18.2.2")),
    l3links=(("mmr", "up2", "isp2", "eth0"),),
    nft={isp: f"""table inet bcp38 {{
    chain forward {{
        type filter hook forward priority 0; policy accept;
        iifname "eth0" ip saddr != {v4} counter drop comment "bcp38"
        iifname "eth0" ip6 saddr != {v6} counter drop comment "bcp38"
    }}
}}
""" for isp, v4, v6 in (("isp1", "198.18.1.0/24", "2001:db8:a1::/48"),
                        ("isp2", "198.18.2.0/24", "2001:db8:a2::/48"))},
)
ISP_CN_ADDR4 = "198.51.100.1"
ISP_MN_ADDR4 = "192.168.1.10"
ISP_MN_ADDR = "fd00:1::10"

TOPOLOGIES = {"draft": DRAFT, "host": HOST, "hostnat": HOSTNAT, "isp": ISP}

MN_ADDR = "2001:db8:1::10"
CN_ADDR = "2001:db8:ff::1"
MN_ADDR4 = "192.0.2.10"
CN_ADDR4 = "198.51.100.1"


class Testbed:
    """Build (``up``) and remove (``down``) the topology; a context manager that always
    tears down what it built."""

    __test__ = False    # not a pytest test class, whatever its name

    def __init__(self, prefix: str = "mmr-", topology: Topology | None = None):
        if not prefix or len(prefix) > 12 or any(c in prefix for c in " /"):
            raise UserError(f"--prefix {prefix!r}: use 1-12 characters without spaces or '/'")
        self.prefix = prefix
        self.topo = topology or DRAFT

    def ns(self, node: str) -> str:
        return self.prefix + node

    def exists(self) -> bool:
        have = set(namespaces())
        return any(self.ns(n) in have for n in self.topo.nodes)

    def up(self, wait: float = 10.0) -> "Testbed":
        require_tools()
        if self.exists():
            raise UserError(f"a testbed with prefix {self.prefix!r} already exists; remove it with "
                            f"'mmr testbed down --prefix {self.prefix}' or choose another --prefix")
        try:
            self._build()
            self._wait(wait)
        except Exception:
            self.down()
            raise
        return self

    def _build(self) -> None:
        t = self.topo
        for n in t.nodes:
            sh("ip", "netns", "add", self.ns(n))
            sh("ip", "link", "set", "lo", "up", ns=self.ns(n))
            for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"):
                sysctl(self.ns(n), key, 0)
            # static addressing: keep IPv6 addresses across link down/up, as IPv4 does
            for key in ("net.ipv6.conf.all.keep_addr_on_down", "net.ipv6.conf.default.keep_addr_on_down"):
                sysctl(self.ns(n), key, 1)
        for a, da, b, db in t.links:
            sh("ip", "link", "add", da, "netns", self.ns(a), "type", "veth", "peer", "name", db,
               "netns", self.ns(b))
        for link in t.l3links:
            self._join(*link)
        for a, da, b, db in t.links + list(t.l3links):
            for ns, dev in ((a, da), (b, db)):
                sh("ip", "link", "set", dev, "up", ns=self.ns(ns))
        for n, addrs in t.addrs.items():
            for dev, addr in addrs:
                extra = ["nodad"] if ":" in addr else []
                sh("ip", "addr", "add", *addr.split(), "dev", dev, *extra, ns=self.ns(n))
        for n in t.forwarders:
            sysctl(self.ns(n), "net.ipv6.conf.all.forwarding", 1)
            sysctl(self.ns(n), "net.ipv4.ip_forward", 1)
        for n in t.backup:            # a route over a link without carrier is skipped: the backup
            for key in ("net.ipv6.conf.all.ignore_routes_with_linkdown",
                        "net.ipv4.conf.all.ignore_routes_with_linkdown"):
                sysctl(self.ns(n), key, 1)
        for n, routes in t.routes.items():
            for r in routes:
                sh("ip", *r, ns=self.ns(n))
        for n, script in t.nft.items():
            p = subprocess.run(["ip", "netns", "exec", self.ns(n), "nft", "-f", "-"], input=script,
                               capture_output=True, text=True, timeout=20)
            if p.returncode != 0:
                raise RuntimeError(f"nft in {self.ns(n)}: {p.stderr.strip()}")

    def _pidfile(self, ns_a: str, dev_a: str) -> str:
        return f"/run/mmr-testbed/{self.prefix}{ns_a}-{dev_a}.pid"

    def _join(self, a: str, da: str, b: str, db: str) -> None:
        """Start the process that joins TUN da in a and TUN db in b (an L3 link); it stays
        after this process exits and stops in down() or stop_l3link()."""
        os.makedirs("/run/mmr-testbed", exist_ok=True)
        p = subprocess.Popen([sys.executable, "-m", "engine.l3link", self.ns(a), da, self.ns(b), db],
                             cwd=ENGINE_HOME, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, start_new_session=True, text=True)
        line = p.stdout.readline().strip()
        if line != "ready":
            p.kill()
            raise RuntimeError(f"L3 link {a}:{da} - {b}:{db} did not start: {p.stderr.read().strip()}")
        p.stdout.close()
        p.stderr.close()
        with open(self._pidfile(a, da), "w") as f:
            f.write(f"{p.pid}\n")

    def stop_l3link(self, node: str, dev: str) -> bool:
        """Stop the process of the L3 link with dev on node (both TUNs vanish); False if it
        was not running."""
        for a, da, b, db in self.topo.l3links:
            if (a, da) == (node, dev) or (b, db) == (node, dev):
                return self._stop_join(a, da)
        raise ValueError(f"no L3 link {node}:{dev}")

    def _stop_join(self, a: str, da: str) -> bool:
        path = self._pidfile(a, da)
        try:
            pid = int(open(path).read())
        except (OSError, ValueError):
            return False
        os.unlink(path)
        try:                          # ours only: the process runs engine.l3link for this prefix
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            return False
        if b"engine.l3link" not in cmd or self.ns(a).encode() not in cmd:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            try:
                if open(f"/proc/{pid}/stat").read().split(") ")[-1].startswith("Z"):
                    break
            except OSError:
                break
            time.sleep(0.02)
        return True

    def relink(self, node_a: str, dev_a: str) -> None:
        """Re-create the link of dev_a on node_a (after a test deleted it, or stopped its L3
        link): the veth pair or the joined TUNs, its addresses on both ends and the routes of
        both nodes (those still there are kept)."""
        for a, da, b, db in list(self.topo.links) + list(self.topo.l3links):
            if (a, da) == (node_a, dev_a) or (b, db) == (node_a, dev_a):
                break
        else:
            raise ValueError(f"no link {node_a}:{dev_a}")
        if (a, da, b, db) in self.topo.l3links:
            self._stop_join(a, da)
            self._join(a, da, b, db)
        else:
            sh("ip", "link", "add", da, "netns", self.ns(a), "type", "veth", "peer", "name", db, "netns", self.ns(b))
        for ns, dev in ((a, da), (b, db)):
            sh("ip", "link", "set", dev, "up", ns=self.ns(ns))
            for d, addr in self.topo.addrs.get(ns, []):
                if d == dev:
                    sh("ip", "addr", "add", *addr.split(), "dev", dev, *(["nodad"] if ":" in addr else []),
                       ns=self.ns(ns))
        for ns in (a, b):
            for r in self.topo.routes.get(ns, []):
                sh("ip", *r, ns=self.ns(ns), check=False)

    def _wait(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        for node, target in (self.topo.check,) + tuple(self.topo.more_checks):
            self._wait_one(node, target, deadline)

    def _wait_one(self, node: str, target: str, deadline: float) -> None:
        while True:
            try:         # the engine this process imported, not a source tree in the cwd
                sh(sys.executable, "-m", "engine.peers", "reach", target, "1", ns=self.ns(node), cwd=ENGINE_HOME)
                ok = True
            except RuntimeError:
                ok = None
            if ok is not None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"testbed built but {node} cannot reach {target}")
            time.sleep(0.2)

    def run(self, node: str, *cmd: str, check: bool = True, timeout: float = 30):
        try:
            return sh(*cmd, ns=self.ns(node), timeout=timeout)
        except RuntimeError:
            if check:
                raise
            return None

    def down(self) -> int:
        """Remove every namespace of this prefix, of any topology (veths go with them);
        returns how many."""
        k = 0
        for t in TOPOLOGIES.values():         # the L3 links' processes first: their TUNs go with them
            for a, da, _, _ in t.l3links:
                self._stop_join(a, da)
        nodes = dict.fromkeys([*self.topo.nodes, *(n for t in TOPOLOGIES.values() for n in t.nodes)])
        have = set(namespaces())
        for n in nodes:
            if self.ns(n) in have:
                sh("ip", "netns", "del", self.ns(n), check=False)
                k += 1
        return k

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.down()
        return False
