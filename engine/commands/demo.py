"""mmr demo: the draft's section 6 experiment, end to end."""
from __future__ import annotations

import argparse

DESCRIPTION = """\
Run the experiment of draft-park-mis section 6 on this machine and show its outcome:

  1. build the testbed in network namespaces: MN - MMR - AR1/AR2 - CN ('mmr testbed');
  2. put nftables counters on AR1 and AR2;
  3. start 'mmr run' on the MMR with the policy (default: the built-in one, in which AR1
     offers QoS and AR2 does not but has the shorter queue);
  4. send a video stream from MN to CN whose packets carry the traffic control option
     (service video, preference QoS), and an untagged UDP echo exchange;
  5. print which AR carried each (the counters), what CN received, and the engine's own
     summary line; then stop mmr and remove the testbed.

Expected with the built-in policy: video via AR1, echo via AR2, as in the draft's 6.2.

--topology isp runs it across two ISPs as a real router meets them ('mmr testbed up
--topology isp'): a private LAN (192.168.1.0/24 and the ULA fd00:1::/64), ISP1 over
Ethernet and ISP2 over an L3 link (no MAC header), each dropping sources outside its own
space (BCP 38), a CN that routes nothing to the LAN, the MMR's gateways learned from its
kernel's routes.  The built-in ISP policy (engine/demo-isp.toml) is the draft's (ISP1 offers
QoS, ISP2 the shorter queue) with source translation: private IPv4 to each ISP's address
(NAPT44), the ULA onto each ISP's delegated prefix (NPTv6).  Both families, at once:

  - video, 1200-byte datagrams: IPv6 tagged with the option (service video, preference
    QoS); IPv4, which has no such option, marked DSCP AF41, which the policy's [[rule]]
    makes video asking for QoS;
  - an untagged UDP echo exchange per family.

It prints which ISP carried each flow (nftables counters on ISP1 and ISP2, counted before
their BCP 38 rule), what CN received and the source address each flow arrived from there,
checked against the uplink's address (IPv4) or its npt_prefix (IPv6).  Expected with the
built-in ISP policy: video via ISP1 and echo via ISP2, in both families, each from the
address of the ISP that carried it."""

EPILOG = """\
needs: root, iproute2, nftables (apt-get install -y iproute2 nftables).
exit status: 0 when each flow took the AR (ISP) the policy predicts and traffic was
delivered (isp: from the source address expected), 1 when not, 2 on a usage, host or
configuration error.

examples:
  mmr demo
  mmr demo --keep              (leave the testbed up to look around; 'mmr testbed down --prefix mmrdemo-')
  mmr demo --config my.toml    (your policy on the same testbed: lan0, up1, up2)
  mmr demo --topology isp      (IPv4 and IPv6 across two ISPs, through NAPT44 and NPTv6)
  mmr demo --topology isp --config my.toml
                               (lan0, up1 to ISP1, up2 to ISP2; gateways left to "auto")"""


def register(sub) -> None:
    p = sub.add_parser("demo", help="the draft's section 6 experiment, end to end (needs root)",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topology", choices=("draft", "isp"), default="draft",
                   help="draft: the draft's testbed (the default); isp: two ISPs, a private LAN, "
                        "IPv4 and IPv6 through source translation")
    p.add_argument("--config", metavar="CFG",
                   help="policy file (default: the built-in policy of the topology)")
    p.add_argument("--packets", type=int, default=300, metavar="N",
                   help="video datagrams to send (default 300, about 1 s)")
    p.add_argument("--prefix", default="mmrdemo-", metavar="P",
                   help="namespace name prefix (default 'mmrdemo-')")
    p.add_argument("--keep", action="store_true", help="leave the testbed up afterwards")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.demo import Demo, IspDemo
    from engine.errors import UserError

    if args.packets < 1:
        raise UserError("--packets must be at least 1")
    kind = IspDemo if args.topology == "isp" else Demo
    return kind(args.prefix, args.config, args.packets, args.keep).run()
