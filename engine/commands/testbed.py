"""mmr testbed: build or remove the draft's MN - MMR - AR1/AR2 - CN topology."""
from __future__ import annotations

import argparse

DESCRIPTION = """\
Build or remove the testbed of draft-park-mis section 6 in network namespaces on this
machine: a mobile node (MN) on the LAN of a multihomed mobile router (MMR) whose two
uplinks reach two access routers (AR1, AR2) that both lead to a correspondent node (CN).

  <prefix>mn   eth0 2001:db8:1::10        LAN 2001:db8:1::/64, 192.0.2.0/24
  <prefix>mmr  lan0 2001:db8:1::1, up1 2001:db8:a1::2, up2 2001:db8:a2::2
  <prefix>ar1  eth0 2001:db8:a1::1, eth1 2001:db8:c1::1
  <prefix>ar2  eth0 2001:db8:a2::1, eth1 2001:db8:c2::1
  <prefix>cn   2001:db8:ff::1 (loopback), reachable through both ARs

AR1 and AR2 also share a link (2001:db8:12::/64) and route the LAN over it as a backup, so
traffic from CN still reaches the MMR when one of its uplinks is down.

--topology host builds the setting of host mode (draft-hong-mif) instead:

  <prefix>host i1 2001:db8:b1::2, i2 2001:db8:b2::2   (no routes: 'mmr host' adds them via vi0)
  <prefix>r1   eth0 2001:db8:b1::1 ...   <prefix>r2   eth0 2001:db8:b2::1 ...
  <prefix>peer 2001:db8:ee::1, 198.51.100.9 (loopback); routes the VI prefixes
               2001:db8:99::/64 and 198.18.99.0/24 back via r1 and r2

--topology hostnat builds the same host on ordinary networks (issue 11 item 7):

  <prefix>host i1 198.18.21.2, i2 198.18.22.2 (and IPv6); default routes via r1 (metric 100)
               and r2 (metric 200), as DHCP and RA would install them
  <prefix>r1, <prefix>r2   route nothing to the VI's prefixes and drop sources outside the
               host's link (BCP 38)
  <prefix>peer 198.51.100.9, .19, .29, 2001:db8:ee::1; routes only the links' prefixes
  so only translated IPv4 from vi0 reaches the peer ('mmr host' with nat "auto")

--topology isp builds two real ISPs instead (what mmr must overcome; issue 11):

  <prefix>mn   eth0 192.168.1.10, fd00:1::10     LAN private: 192.168.1.0/24, ULA fd00:1::/64
  <prefix>mmr  up1 198.18.1.2, 2001:db8:a1::2 (Ethernet, to ISP1)
               up2 198.18.2.2 peer 198.18.2.1, 2001:db8:a2::2 (an L3 device, to ISP2: two TUNs
               joined by a process, as PPPoE or an LTE modem in raw-IP mode gives a router)
  <prefix>isp1, <prefix>isp2   drop sources outside their own space (BCP 38) and route a
               delegated /56 (2001:db8:a1:100::/56, 2001:db8:a2:100::/56) to the MMR
  <prefix>cn   2001:db8:ff::1, 198.51.100.1; routes only the ISPs' space, not the LAN

The MMR's kernel has default routes via both (up1 first) and no NAT, so the LAN reaches
nothing until something translates its sources.

The MMR forwards by kernel routing (default via AR2) until 'mmr run' runs in its namespace.
The built-in policy matches this testbed: 'ip netns exec mmr-mmr mmr run'."""

EPILOG = """\
examples:
  mmr testbed up
  ip netns exec mmr-mn ping -6 -c 3 2001:db8:ff::1
  mmr testbed down
  mmr testbed up --prefix t1-      (two testbeds can coexist with different prefixes)

Needs root and iproute2; 'up' fails with one sentence when the prefix is already in use."""


def register(sub) -> None:
    p = sub.add_parser("testbed", help="build or remove the draft's section 6 testbed (namespaces)",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["up", "down", "status"], help="build, remove or list")
    p.add_argument("--prefix", default="mmr-", metavar="P",
                   help="namespace name prefix (default 'mmr-')")
    p.add_argument("--topology", choices=["draft", "host", "hostnat", "isp"], default="draft",
                   help="draft: MN - MMR - AR1/AR2 - CN (default); host: a host with interfaces "
                        "i1, i2 via routers r1, r2 to a peer that routes the VI's prefixes back, for "
                        "'mmr host'; hostnat: the same host where nothing routes the VI's prefixes and "
                        "the routers drop foreign sources (BCP 38); isp: a private LAN "
                        "behind two ISPs with BCP 38, ISP2 over an L3 device")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.testbed import TOPOLOGIES, Testbed

    tb = Testbed(args.prefix, TOPOLOGIES[args.topology])
    if args.action == "up":
        tb.up()
        print(f"testbed {args.prefix!r} is up: " + ", ".join(tb.ns(n) for n in tb.topo.nodes))
    elif args.action == "down":
        k = tb.down()
        print(f"testbed {args.prefix!r}: removed {k} namespaces")
    else:
        print(f"testbed {args.prefix!r}: " + ("up" if tb.exists() else "not present"))
    return 0
