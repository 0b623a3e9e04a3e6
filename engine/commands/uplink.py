"""mmr uplink: the operator's override of one uplink of a running router (mwan3's ifdown /
ifup, OPNsense's "mark gateway as down"), through its control socket."""
from __future__ import annotations

import argparse

from engine.commands.status import SOCKET_HELP

DESCRIPTION = """\
Override the connection manager for one uplink of a running 'mmr run' or 'mmr host', at run
time.  The override survives 'mmr reload' and lasts until it is changed or mmr stops:

  down   take the uplink out of use: it gets no new flows and its flows move at once to the
         best other uplink for their service and preference, as after a failure (listed
         among the failovers with the reason "admin down")
  up     keep it in use whatever its link state and probes say (it still needs a next hop
         to send to, and usable = false in the policy file still keeps it out)
  auto   give it back to the connection manager: link state and probes decide again (the
         state every uplink starts in)

Probes go on under an override.  'mmr status' shows each uplink's mode in its admin column
(and as "admin" with --json); the hook, if configured, runs with ACTION admin-<mode>."""

EPILOG = """\
examples:
  mmr uplink ar2 down        # maintenance on the cellular link: move its flows away
  mmr uplink ar2 auto        # done: the monitor decides again
  ip netns exec mmr-mmr mmr uplink ar1 up

Root only: it changes the router's state.  Members of [monitor] control_read_group are told
that the control socket is read-only for them.

exit status: 0 done, 1 the router failed to answer, 2 no router / not allowed / no such
uplink / not a mode."""

MODES = ("down", "up", "auto")


def register(sub) -> None:
    p = sub.add_parser("uplink", help="take an uplink of a running router out of use, force it up, or "
                                      "hand it back to the monitor", description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", help="the uplink, by its name in the policy file (e.g. ar1)")
    p.add_argument("mode", metavar="MODE", help="down, up or auto")
    p.add_argument("--socket", default="@mmr", metavar="ADDR", help=SOCKET_HELP)
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.commands.status import _ask, cell
    from engine.errors import UserError

    if args.mode not in MODES:
        raise UserError(f"{args.mode!r} is not a mode; write down, up or auto")
    if not args.name or len(args.name) > 64:
        raise UserError(f"{args.name!r} is not an uplink name; 'mmr status' lists the uplinks")
    ans = _ask(args, {"cmd": "uplink", "name": args.name, "mode": args.mode})
    print(cell(ans["message"]))
    return 0
