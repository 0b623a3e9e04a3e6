"""mmr status, mmr flows, mmr reload: talk to a running 'mmr run' or 'mmr host' over its
control socket.  ``table()`` lays out every table these commands (and ``mmr uplink``) print."""
from __future__ import annotations

import argparse
import json
import re
import unicodedata

SOCKET_HELP = ("control socket of the router (default: monitor.control_socket of the built-in "
               "policy, '@mmr': abstract, one per network namespace)")

STATUS_DESC = """\
Show a running router: every uplink with its state (the operator's override set with
'mmr uplink', usable or not, link, probes, why it is down; '(absent)' after a device that
does not exist now, and --json gives each uplink's device index as 'ifindex', null while it
is absent; mmr run's LAN device the same way, under 'lan'), the probes' round-trip time and
loss, the characteristics the metric function uses now (configured, or measured where
[monitor] measure says so), flows per uplink, the last failovers, and the engine's counters.

With --config, print instead the policy the router runs now, as the engine holds it after
validation and the last reload (every default filled in; not the file on disk, which may have
changed since): TOML that 'mmr config --check --config FILE' accepts, or JSON with --json."""

FLOWS_DESC = """\
List the flows in a running router's flowbase, most recently used first: addresses, protocol,
ports, service type, preference, uplink, packets and bytes."""

RELOAD_DESC = """\
Make a running router re-read its policy file (the same as sending it SIGHUP).  A valid file
takes effect at once for new flows; the flowbase is kept, so existing flows stay where they
are.  An invalid file is rejected with its error and the old policy keeps running; a file
that changes the LAN device, the option type, nat_ports or an uplink's device, gateways or
translation is rejected too (restart for those).  mmr run and mmr host accept uplinks added
and removed: an added one takes a free uplink slot ([engine] uplink_slots, fixed at start)
and is used once its device, link, address and next hop are up; a removed one's flows move
to the others (counted as moved, as on a failure), its translations and probes go, and its
device is the kernel's again.  More uplinks than slots are rejected, naming the key to raise
(with a restart).  mmr host keeps vi0's MTU: it adds only an interface whose device exists
and whose MTU is at least vi0's (else one sentence says what to change)."""

ACCESS = """\
Root may use every command.  Members of the group named by [monitor] control_read_group may
use 'mmr status' (with --json and --config) and 'mmr flows'; 'mmr reload' and 'mmr uplink'
answer them that the socket is read-only for them.  Anyone else is refused."""

NAMESPACE = """\
A router in a network namespace is reached from inside it:
  ip netns exec mmr-mmr mmr status"""

EPILOGS = {
    "status": f"""\
examples:
  mmr status
  mmr status --json | jq '.uplinks[] | {{name, usable, admin}}'
  mmr status --config > running.toml && diff /etc/mmr/policy.toml running.toml

{NAMESPACE}

{ACCESS}

exit status: 0 success, 1 the router failed to answer, 2 no router / not allowed.""",
    "flows": f"""\
examples:
  mmr flows --uplink ar1 --limit 20
  mmr flows --json | jq '.flows[] | select(.service == "voip")'

{NAMESPACE}

{ACCESS}

exit status: 0 success, 1 the router failed to answer, 2 no router / not allowed / no such uplink.""",
    "reload": f"""\
examples:
  mmr config --check --config /etc/mmr/policy.toml && mmr reload

{NAMESPACE}

Root only.

exit status: 0 reloaded, 1 the router failed to answer, 2 no router / not allowed / rejected reload.""",
}


def register(sub) -> None:
    for name, desc, helptext, func in (
        ("status", STATUS_DESC, "state of a running router's uplinks, flows and counters", status),
        ("flows", FLOWS_DESC, "the flows of a running router", flows),
        ("reload", RELOAD_DESC, "make a running router re-read its policy file", reload),
    ):
        p = sub.add_parser(name, help=helptext, description=desc, epilog=EPILOGS[name],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--socket", default="@mmr", metavar="ADDR", help=SOCKET_HELP)
        if name != "reload":
            p.add_argument("--json", action="store_true", help="print the answer as one JSON object")
        if name == "status":
            p.add_argument("--config", action="store_true",
                           help="print the policy the router runs now (TOML; JSON with --json) instead "
                                "of its state")
        if name == "flows":
            p.add_argument("--uplink", metavar="NAME", help="only the flows on this uplink")
            p.add_argument("--limit", type=int, default=1000, metavar="N",
                           help="at most N flows (default 1000)")
        p.set_defaults(func=func)


# ------------------------------------------------------------------------------ tables
def cell(v) -> str:
    """A value as a table shows it: None is '-', control characters are escaped (a name
    from a policy file cannot break a row or drive the terminal)."""
    if v is None:
        return "-"
    text = str(v)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def width(text: str) -> int:
    """Terminal columns: East Asian wide and full-width characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 0 if unicodedata.combining(ch) else 1
               for ch in text)


def table(columns, rows) -> list[str]:
    """The lines of a table whose every column is as wide as its widest cell, heading included.

    ``columns``: (heading, align) pairs, align "<" (left) or ">" (right); ``rows``: sequences
    of values, one per column.  Two spaces separate columns; no line ends in blanks."""
    head = [h for h, _ in columns]
    body = [[cell(v) for v in r] for r in rows]
    widths = [max(width(x) for x in col) for col in zip(head, *body)]
    out = []
    for r in [head, *body]:
        parts = []
        for i, (x, (_, align)) in enumerate(zip(r, columns)):
            pad = " " * (widths[i] - width(x))
            last = i == len(columns) - 1
            parts.append(pad + x if align == ">" else x if last else x + pad)
        out.append("  ".join(parts).rstrip())
    return out


# ------------------------------------------------------------------------------ TOML
_BARE = re.compile(r"[A-Za-z0-9_-]+")


def toml_string(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04X}")
        elif 0xD800 <= o <= 0xDFFF:          # not representable in TOML (nor in a policy file)
            out.append("\\uFFFD")
        else:
            out.append(ch)
    return "".join(out) + '"'


def _key(k) -> str:
    k = str(k)
    return k if _BARE.fullmatch(k) else toml_string(k)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)                      # finite: a policy file has no inf or nan
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {type(v).__name__}")


def _inline(v) -> bool:
    """A table of plain values is written inline (``packet_size = { data = 1.0, ... }``)."""
    return isinstance(v, dict) and all(not isinstance(x, (dict, list)) for x in v.values())


def toml_text(doc: dict) -> str:
    """A policy document (tables, arrays of tables, values) as TOML."""
    out: list[str] = []

    def section(path: str, t: dict, array: bool) -> None:
        plain = {k: v for k, v in t.items() if not isinstance(v, dict) or _inline(v)}
        if plain or array or len(plain) == len(t):
            out.append(f"\n[[{path}]]" if array else f"\n[{path}]")
            out.extend(f"{_key(k)} = {_value(v)}" for k, v in plain.items())
        for k, v in t.items():
            if k not in plain:
                section(f"{path}.{_key(k)}", v, False)

    for k, v in doc.items():
        if isinstance(v, list) and all(isinstance(x, dict) for x in v):
            for t in v:
                section(_key(k), t, True)
        elif isinstance(v, dict):
            section(_key(k), v, False)
        else:
            out.insert(0, f"{_key(k)} = {_value(v)}")
    return "\n".join(out).lstrip("\n") + "\n"


# ------------------------------------------------------------------------------ commands
def _ask(args, req):
    from engine.control import ask
    from engine.errors import UserError

    ans = ask(args.socket, req)
    if not ans.get("ok"):
        raise UserError(ans.get("error") or ans.get("message") or "the router refused the request")
    return ans


def status(args) -> int:
    if args.config:
        return running_config(args)
    ans = _ask(args, {"cmd": "status"})
    if args.json:
        print(json.dumps(ans, indent=1))
        return 0
    print(f"mmr {'host' if ans.get('mode') == 'host' else 'run'}: policy {cell(ans['policy'])}, up "
          f"{ans['uptime_s']:g} s, {ans['flows']} flows, {ans['reloads']} reloads")
    rows = []
    for u in ans["uplinks"]:
        rtt = f"{u['rtt_ms']:.2f}" if u["rtt_ms"] is not None else "-"
        loss = f"{100 * u['probe_loss']:.0f}%" if u["probe_loss"] is not None else "-"
        usable = ("yes, degraded" if u.get("degraded") else "yes") if u["usable"] else "NO"
        reason = u["reason"] or ""
        if u.get("degraded") and u.get("degraded_reason"):
            reason = "; ".join(x for x in (reason, u["degraded_reason"]) if x)
        device = u["device"] + (" (absent)" if "ifindex" in u and u["ifindex"] is None else "")
        rows.append([u["name"], device, u.get("admin", "auto"), usable, u["link"],
                     u["probes"], rtt, loss, u["flows"], reason])
    for line in table([("uplink", "<"), ("device", "<"), ("admin", "<"), ("usable", "<"), ("link", "<"),
                       ("probes", "<"), ("rtt ms", ">"), ("loss", ">"), ("flows", ">"), ("reason", "<")], rows):
        print(line)
    lan = ans.get("lan")
    if lan:
        print(f"LAN: {cell(lan['device'])} " + (f"(index {lan['ifindex']})" if lan["ifindex"] is not None else
                                              "(absent: nothing is read from or sent to the LAN until it is back)"))
    hops = ans.get("next_hops_by_family") or {}
    if hops:
        print("next hops: " + "; ".join(
            f"{cell(name)} " + (f"IPv4 {h['ipv4'] or '-'}, IPv6 {h['ipv6'] or '-'}"
                                if h["ipv4"] != "point-to-point" else "point-to-point")
            for name, h in hops.items()))
    pinned = [f"{cell(name)} {r['address']} ({r['from']}" + (f", {r['expires_s']} s" if r["expires_s"] is not None
                                                          else "") + ")"
              for name, rs in (ans.get("resolvers") or {}).items() for r in rs]
    if pinned:
        print("resolvers: " + "; ".join(pinned))
    for m in ans["failovers"][-5:]:
        print(f"failover: {cell(m['uplink'])} ({m['reason']}): {m['flows']} flows moved in {m['rebind_ms']} ms")
    if len(ans.get("workers", [])) > 1:
        for w in ans["workers"]:
            print(f"worker {w['worker']}: " + " ".join(f"{k}={v}" for k, v in w.items() if k != "worker"))
    drops = {k: v for k, v in ans["drops"].items() if v}
    print("counters: " + " ".join(f"{k}={v}" for k, v in ans["counters"].items() if k not in ans["drops"]))
    print("drops: " + (" ".join(f"{k}={v}" for k, v in drops.items()) or "none"))
    return 0


def running_config(args) -> int:
    """mmr status --config: the policy the engine runs, from the engine."""
    ans = _ask(args, {"cmd": "config"})
    if args.json:
        print(json.dumps(ans, indent=1))
        return 0
    mode = "host" if ans.get("mode") == "host" else "run"
    print(f"# the policy a running mmr {mode} uses now, as it holds it (read through its control socket,\n"
          f"# not from disk; every default filled in); loaded from {cell(ans['policy'])}, "
          f"reloaded {ans['reloads']} times")
    print(toml_text(ans["config"]), end="")
    return 0


def flows(args) -> int:
    req = {"cmd": "flows", "limit": args.limit}
    if args.uplink:
        req["uplink"] = args.uplink
    ans = _ask(args, req)
    if args.json:
        print(json.dumps(ans, indent=1))
        return 0
    rows = [[f["src"], f["dst"], f["proto"], f["sport"], f["dport"], f["service"], f["preference"], f["uplink"],
             f["packets"], f["bytes"]] for f in ans["flows"]]
    for line in table([("src", "<"), ("dst", "<"), ("proto", ">"), ("sport", ">"), ("dport", ">"),
                       ("service", "<"), ("pref", ">"), ("uplink", "<"), ("packets", ">"), ("bytes", ">")], rows):
        print(line)
    print(f"{len(ans['flows'])} of {ans['total']} flows")
    return 0


def reload(args) -> int:
    ans = _ask(args, {"cmd": "reload"})
    print(ans["message"])
    return 0
