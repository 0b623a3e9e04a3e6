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

Expected with the built-in policy: video via AR1, echo via AR2, as in the draft's 6.2."""

EPILOG = """\
needs: root, iproute2, nftables (apt-get install -y iproute2 nftables).
exit status: 0 when each flow took the AR the policy predicts and traffic was delivered,
1 when not, 2 on a usage, host or configuration error.

examples:
  mmr demo
  mmr demo --keep              (leave the testbed up to look around; 'mmr testbed down --prefix mmrdemo-')
  mmr demo --config my.toml    (your policy on the same testbed: lan0, up1, up2)"""


def register(sub) -> None:
    p = sub.add_parser("demo", help="the draft's section 6 experiment, end to end (needs root)",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="CFG", help="policy file (default: the built-in policy)")
    p.add_argument("--packets", type=int, default=300, metavar="N",
                   help="video datagrams to send (default 300, about 1 s)")
    p.add_argument("--prefix", default="mmrdemo-", metavar="P",
                   help="namespace name prefix (default 'mmrdemo-')")
    p.add_argument("--keep", action="store_true", help="leave the testbed up afterwards")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.demo import Demo
    from engine.errors import UserError

    if args.packets < 1:
        raise UserError("--packets must be at least 1")
    return Demo(args.prefix, args.config, args.packets, args.keep).run()
