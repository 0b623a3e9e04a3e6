"""mmr status, mmr flows, mmr reload: talk to a running 'mmr run' or 'mmr host' over its
control socket."""
from __future__ import annotations

import argparse
import json

SOCKET_HELP = ("control socket of the router (default: monitor.control_socket of the built-in "
               "policy, '@mmr': abstract, one per network namespace)")

STATUS_DESC = """\
Show a running router: every uplink with its state (usable or not, link, probes, why it is
down), the probes' round-trip time and loss, the characteristics the metric function uses now
(configured, or measured where [monitor] measure says so), flows per uplink, the last
failovers, and the engine's counters."""

FLOWS_DESC = """\
List the flows in a running router's flowbase, most recently used first: addresses, protocol,
ports, service type, preference, uplink, packets and bytes."""

RELOAD_DESC = """\
Make a running router re-read its policy file (the same as sending it SIGHUP).  A valid file
takes effect at once for new flows; the flowbase is kept, so existing flows stay where they
are.  An invalid file is rejected with its error and the old policy keeps running; a file
that changes the LAN device, the uplinks or the option type is rejected too (restart for
those)."""

EPILOG = """\
A router in a network namespace is reached from inside it:
  ip netns exec mmr-mmr mmr status

exit status: 0 success, 1 the router failed to answer, 2 no router / bad request / rejected reload."""


def register(sub) -> None:
    for name, desc, helptext, func in (
        ("status", STATUS_DESC, "state of a running router's uplinks, flows and counters", status),
        ("flows", FLOWS_DESC, "the flows of a running router", flows),
        ("reload", RELOAD_DESC, "make a running router re-read its policy file", reload),
    ):
        p = sub.add_parser(name, help=helptext, description=desc, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--socket", default="@mmr", metavar="ADDR", help=SOCKET_HELP)
        if name != "reload":
            p.add_argument("--json", action="store_true", help="print the answer as one JSON object")
        if name == "flows":
            p.add_argument("--uplink", metavar="NAME", help="only the flows on this uplink")
            p.add_argument("--limit", type=int, default=1000, metavar="N",
                           help="at most N flows (default 1000)")
        p.set_defaults(func=func)


def _ask(args, req):
    from engine.control import ask
    from engine.errors import UserError

    ans = ask(args.socket, req)
    if not ans.get("ok"):
        raise UserError(ans.get("error") or ans.get("message") or "the router refused the request")
    return ans


def status(args) -> int:
    ans = _ask(args, {"cmd": "status"})
    if args.json:
        print(json.dumps(ans, indent=1))
        return 0
    print(f"mmr {'host' if ans.get('mode') == 'host' else 'run'}: policy {ans['policy']}, up {ans['uptime_s']:g} s, {ans['flows']} flows, "
          f"{ans['reloads']} reloads")
    print(f"{'uplink':<10}{'device':<9}{'usable':<8}{'link':<6}{'probes':<9}{'rtt ms':>8}{'loss':>7}"
          f"{'flows':>8}  reason")
    for u in ans["uplinks"]:
        rtt = f"{u['rtt_ms']:.2f}" if u["rtt_ms"] is not None else "-"
        loss = f"{100 * u['probe_loss']:.0f}%" if u["probe_loss"] is not None else "-"
        print(f"{u['name']:<10}{u['device']:<9}{'yes' if u['usable'] else 'NO':<8}{u['link']:<6}"
              f"{u['probes']:<9}{rtt:>8}{loss:>7}{u['flows']:>8}  {u['reason']}")
    for m in ans["failovers"][-5:]:
        print(f"failover: {m['uplink']} ({m['reason']}): {m['flows']} flows moved in {m['rebind_ms']} ms")
    drops = {k: v for k, v in ans["drops"].items() if v}
    print("counters: " + " ".join(f"{k}={v}" for k, v in ans["counters"].items() if k not in ans["drops"]))
    print("drops: " + (" ".join(f"{k}={v}" for k, v in drops.items()) or "none"))
    return 0


def flows(args) -> int:
    req = {"cmd": "flows", "limit": args.limit}
    if args.uplink:
        req["uplink"] = args.uplink
    ans = _ask(args, req)
    if args.json:
        print(json.dumps(ans, indent=1))
        return 0
    print(f"{'src':<28}{'dst':<28}{'proto':>6}{'sport':>7}{'dport':>7}  {'service':<8}{'pref':>5}  "
          f"{'uplink':<8}{'packets':>9}{'bytes':>12}")
    for f in ans["flows"]:
        print(f"{f['src']:<28}{f['dst']:<28}{f['proto']:>6}{f['sport']:>7}{f['dport']:>7}  "
              f"{f['service']:<8}{f['preference']:>5}  {f['uplink'] or '-':<8}{f['packets']:>9}{f['bytes']:>12}")
    print(f"{len(ans['flows'])} of {ans['total']} flows")
    return 0


def reload(args) -> int:
    ans = _ask(args, {"cmd": "reload"})
    print(ans["message"])
    return 0
