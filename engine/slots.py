"""Uplink slots: every per-uplink structure of the engine (Forwarder, Pipeline counters,
selector, translation, connection manager, workers) is indexed by position and sized once
at start.  mmr run sizes them for [engine] uplink_slots positions; a position without an
uplink holds an *empty* one (never usable, no device, no probes, hidden from what mmr
shows), so that ``mmr reload`` can add an uplink into a free slot and empty the slot of a
removed one while the uplinks that stay keep their positions (their flows and mappings
name positions)."""
import copy

from engine import constants as C
from engine.config import PIN_BASE, Uplink
from engine.errors import UserError


def default_slots(n_uplinks: int) -> int:
    """The slots when [engine] uplink_slots is not set: the configured uplinks and two more,
    at least 4."""
    return min(max(4, n_uplinks + 2), 254)


def empty_uplink() -> Uplink:
    """A slot without an uplink: its device name cannot exist (netlink never reports ""),
    it is never usable and has nothing to probe."""
    return Uplink(name="", device="", gateway=None, gateway_mac=None,
                  chars={n: 0.0 for n in C.CHAR_NAMES}, metric=0, usable=False, nat="none", empty=True)


def slotted(cfg, n_slots: int, old: list[str] | None = None):
    """A copy of ``cfg`` whose uplinks are laid into ``n_slots`` positions: an uplink named in
    ``old`` (the running slots' names, "" where empty) keeps its position, the others take
    the free ones in file order; pins (preference PIN_BASE - position) follow their uplink.
    UserError (one sentence) when the uplinks do not fit."""
    names = [u.name for u in cfg.uplinks]
    if len(names) > n_slots:
        raise UserError(f"{len(names)} uplinks do not fit in the engine's {n_slots} uplink slots; "
                        f"raise [engine] uplink_slots to {len(names)} or more and restart mmr")
    slots: list = [None] * n_slots
    if old:
        for k, name in enumerate(old[:n_slots]):
            if name and name in names:
                slots[k] = name
    free = [k for k in range(n_slots) if slots[k] is None]
    for name in names:
        if name not in slots:
            slots[free.pop(0)] = name
    where = {name: slots.index(name) for name in names}
    out = copy.copy(cfg)
    by_name = {u.name: u for u in cfg.uplinks}
    out.uplinks = [by_name[n] if n is not None else empty_uplink() for n in slots]
    # a pin's preference names its uplink's position: renumbered with it
    renumber = {}
    policies = {}
    for num, p in cfg.policies.items():
        if p.pin is None:
            policies[num] = p
            continue
        k = where[names[p.pin]]
        renumber[num] = PIN_BASE - k
        policies[PIN_BASE - k] = copy.copy(p)
        policies[PIN_BASE - k].number = PIN_BASE - k
        policies[PIN_BASE - k].pin = k
    for num, p in cfg.policies.items():
        if p.pin is None and num in renumber.values():
            raise UserError(f"[policy.{num}] uses preference {num}, which the pin to uplink "
                            f"{names[cfg.policies[[n for n, m in renumber.items() if m == num][0]].pin]} "
                            f"needs in its slot; renumber [policy.{num}] below {PIN_BASE - 254}")
    out.policies = policies
    rules = []
    for r in cfg.rules:
        if r.pin and r.preference in renumber:
            r = copy.copy(r)
            r.preference = renumber[r.preference]
        rules.append(r)
    out.rules = rules
    return out


def slot_names(cfg) -> list[str]:
    """The running slots' names, "" where a slot is empty."""
    return [u.name for u in cfg.uplinks]


def real(cfg) -> list[tuple[int, Uplink]]:
    """(position, uplink) of every slot that holds an uplink."""
    return [(k, u) for k, u in enumerate(cfg.uplinks) if not u.empty]
