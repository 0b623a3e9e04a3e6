"""mmr config: check, show and explain the policy file."""
from __future__ import annotations

import argparse

import numpy as np

from engine import constants as C
from engine.errors import UserError

DESCRIPTION = """\
Check, show or explain a policy file (TOML): the engine settings, the uplinks and their
characteristics, the per-class parameters, the policies (preference -> V_n, V_t) and the
rules for traffic without the traffic control option.  Without --config, the built-in
default policy is used: the draft's testbed with a QoS-capable AR1 and a faster AR2."""

EPILOG = """\
actions (one of):
  --check        validate the file; print a one-line summary; exit 2 on the first mistake,
                 naming the file, the key path and the fix
  --show         print the effective policy, built-in parts included
  --explain      for one --service and --preference, print every usable uplink's normalised
                 characteristics, the flow vector V_t, the products, the score F = V_n . V_t,
                 and the winner (ties: lower metric, then config order)

examples:
  mmr config --check --config /etc/mmr/policy.toml
  mmr config --explain --service video --preference 2"""


def register(sub) -> None:
    p = sub.add_parser("config", help="check, show or explain a policy file",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="CFG", help="policy file (default: the built-in policy)")
    act = p.add_mutually_exclusive_group(required=True)
    act.add_argument("--check", action="store_true", help="validate and summarise")
    act.add_argument("--show", action="store_true", help="print the effective policy")
    act.add_argument("--explain", action="store_true", help="show how a flow's uplink is chosen")
    p.add_argument("--service", default="data", metavar="S",
                   help="with --explain: data, control, voip or video (default data)")
    p.add_argument("--preference", type=int, default=0, metavar="P",
                   help="with --explain: preference 0..65535 (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.config import load_config

    cfg = load_config(args.config)
    if args.check:
        print(f"{cfg.path}: OK: {len(cfg.uplinks)} uplinks, {len(cfg.policies)} policies, "
              f"{len(cfg.rules)} rules, flowbase {cfg.flow_capacity} flows")
    elif args.show:
        print(show(cfg))
    else:
        if args.service not in C.SERVICE_CODE:
            raise UserError(f"--service {args.service!r} is not a class; use data, control, voip or video")
        if not 0 <= args.preference <= 65535:
            raise UserError(f"--preference {args.preference} is out of range; use 0..65535")
        print(explain(cfg, C.SERVICE_CODE[args.service], args.preference))
    return 0


def show(cfg) -> str:
    out = [f"policy file: {cfg.path}",
           f"engine: lan={cfg.lan} lan_prefixes="
           f"{'(the networks of ' + cfg.lan + chr(39) + 's addresses, followed)' if cfg.lan_prefixes_learned else [str(p) for p in cfg.lan_prefixes]} "
           f"option_type=0x{cfg.option_type:02X} flow_capacity={cfg.flow_capacity} "
           f"idle_timeout_s={cfg.idle_timeout_s:g} default_preference={cfg.default_preference}"
           + (f" routed_prefixes={[str(p) for p in cfg.routed_prefixes]}" if cfg.routed_prefixes else ""),
           "uplinks:"]
    for i, u in enumerate(cfg.uplinks):
        chars = " ".join(f"{k}={v:g}" for k, v in u.chars.items())
        out.append(f"  [{i}] {u.name} dev={u.device} gateway={u.gateway or '-'} "
                   f"mac={u.gateway_mac or '(neighbour table)'} metric={u.metric} "
                   f"{'usable' if u.usable else 'UNUSABLE'}"
                   + (" strip_option" if u.strip_option else "")
                   + (" edge=open" if u.edge == "open" else ""))
        out.append(f"      {chars}")
    for f in cfg.forwards:
        ports = f"{f.ports[0]}" if f.ports[0] == f.ports[1] else f"{f.ports[0]}-{f.ports[1]}"
        out.append(f"  forward {'tcp' if f.proto == 6 else 'udp'} {ports} -> {f.to} via "
                   + ", ".join(cfg.uplinks[u].name for u in f.uplinks))
    out.append("classes (data, control, voip, video):")
    for k, v in sorted(cfg.classes.items()):
        out.append(f"  {k} = {', '.join(f'{x:g}' for x in v)}")
    out.append("policies:")
    for n, p in sorted(cfg.policies.items()):
        if not p.network:
            out.append(f"  {n} {p.name}: primary (lowest metric among usable uplinks)")
        else:
            vt = ", ".join(str(f) if isinstance(f, str) else f"{f:g}" for f in p.flow)
            out.append(f"  {n} {p.name}: V_n = ({', '.join(p.network)})  V_t = ({vt})")
    out.append("rules (traffic without the option; first match wins):" if cfg.rules else "rules: none")
    for r in cfg.rules:
        match = []
        for k in ("proto", "sport", "dport", "src", "dst", "dscp"):
            v = getattr(r, k)
            if v is not None:
                if isinstance(v, tuple):
                    v = f"{v[0]}" if v[0] == v[1] else f"{v[0]}-{v[1]}"
                match.append(f"{k}={v}")
        sets = []
        if r.service is not None:
            sets.append(f"service={C.SERVICE_NAMES[r.service]}")
        if r.preference is not None:
            sets.append(f"preference={r.preference}")
        out.append(f"  [{r.index}] {' '.join(match)} -> {' '.join(sets)}")
    if cfg.trust:
        out.append("trust (what an option from a LAN prefix may ask for; longest prefix wins, "
                   "no match: anything; outside it: as untagged):")
        for t in cfg.trust:
            prefs = ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in t.preferences) or "none"
            svcs = ", ".join(C.SERVICE_NAMES[s] for s in t.services) or "none"
            out.append(f"  [{t.index}] src={t.src} services={svcs} preferences={prefs}")
    return "\n".join(out)


def explain(cfg, service: int, preference: int) -> str:
    from engine import _select

    pins = cfg.pin_preferences()
    pinned = []
    if preference in pins:         # pins are kept apart from the option's preference space
        pinned = [f"preference {preference} is reserved for the pin to {cfg.uplinks[pins[preference]].name} "
                  f"([[rule]] uplink = \"{cfg.uplinks[pins[preference]].name}\"): an option asking for it "
                  f"cannot reach the pin; it is treated as undefined, counted (reserved_preference), "
                  f"and gets policy 0"]
        preference = 0
    sel = _select.Selector(cfg)
    norm = sel.normalized()
    terms = sel.policy_terms(preference)
    scores = sel.scores(service, preference)
    pol = cfg.policies.get(preference)
    head = (f"service {C.SERVICE_NAMES[service]}, preference {preference}: "
            + (f"policy {pol.number} {pol.name}" if pol else
               "undefined preference: falls back to policy 0 (none)"))
    out = pinned + [head]
    if terms:
        vt = [w[service] for _, w in terms]
        out.append(f"  V_n = ({', '.join(c for c, _ in terms)})   V_t = ({', '.join(f'{x:g}' for x in vt)})")
    else:
        out.append("  no terms: every score is 0, the lowest metric wins")
    width = max(len(up.name) for up in cfg.uplinks)
    for u, up in enumerate(cfg.uplinks):
        if not up.usable:
            out.append(f"  {up.name:<{width}} unusable: excluded")
            continue
        parts = [f"{norm[u, C.CHAR_INDEX[c]]:.4f}*{w[service]:g}" for c, w in terms]
        out.append(f"  {up.name:<{width}} F = {' + '.join(parts) if parts else '0'} = {scores[u]:.4f}"
                   f"   (metric {up.metric})")
    if preference == sel.lb_slot:
        weights = sel.weights()
        total = float(sum(weights))
        if total > 0:
            shares = ", ".join(f"{up.name} {weights[u]:g} ({100 * weights[u] / total:.0f} %)"
                               for u, up in enumerate(cfg.uplinks) if weights[u] > 0)
            out.append(f"  new flows are spread by weight (smooth weighted round-robin): {shares}; "
                       f"ties in the rotation go to the score above")
            if cfg.select.get("sticky_s"):
                out.append(f"  a source with a load-balanced flow in the last {cfg.select['sticky_s']:g} s "
                           f"keeps its uplink")
        else:
            out.append("  no usable uplink has a weight above 0: load-balanced flows get no uplink")
        return "\n".join(out)
    out_arr = np.empty(1, np.int16)
    sel.select(np.array([service], np.uint8), np.array([preference], np.uint16), out_arr)
    w = int(out_arr[0])
    out.append(f"  winner: {cfg.uplinks[w].name}" if w >= 0 else "  winner: none (no usable uplink)")
    return "\n".join(out)
