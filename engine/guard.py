"""The kernel guard: while mmr forwards, this machine's kernel leaves the packets mmr handles
alone, and it takes them back the moment mmr stops, even when mmr is killed.

mmr reads frames from AF_PACKET taps, which see a packet before the kernel's IP layer; the
kernel would route the same packet too.  An nftables table drops, at prerouting (priority
raw, before the route lookup), the packets mmr forwards: so the kernel neither forwards them
nor answers them (no ICMP unreachable "no route", no redirect, no time exceeded) whatever
routes it has.  What is for the machine itself still reaches it: its own addresses,
broadcast, multicast and link-local (neighbour discovery, DHCP, ping, SSH).

Handover without a gap and without duplicates.  Both sides use one clock, CLOCK_REALTIME: the
table's rules accept everything before START and from END on (``meta time``, whole seconds),
and mmr forwards exactly the frames its ring stamped in [START, END).  So at every instant
one of the two forwards a packet: at start mmr runs (and skips older frames) before START
arrives; at stop mmr sets END a moment ahead, forwards until then, and only then exits.

Crash safety.  The table is created with ``flags owner`` by an ``nft -i`` child whose
standard input is a pipe from mmr: when mmr dies, however it dies, the pipe closes, nft
exits and the kernel removes the table with its owner.  Kernels or nft versions without the
flag get a plain table (logged), removed at a clean stop only.
"""
from __future__ import annotations

import math
import shutil
import subprocess
import time

from engine.errors import UserError
from engine.nftowned import OwnedTable

FAR_FUTURE = 4102444800          # 2100-01-01: "until mmr hands back"


def whole_second_after(t: float, margin: float) -> int:
    return int(math.ceil(t + margin))


class KernelGuard:
    """One nftables table (``table``) whose ``pre`` chain holds ``rules`` (nft rule text,
    one per line) and whose ``window`` chain lets the kernel have everything outside the
    handover window.  ``sets``: named prefix sets the rules use (``@name``), {name: (type,
    [prefix text])}, kept current with update_sets()."""

    def __init__(self, table: str, devices: list[str], rules: list[str], log, sets: dict | None = None):
        if shutil.which("nft") is None:
            raise UserError("nftables ('nft') is not installed; mmr needs it to keep the kernel "
                            "from forwarding what mmr forwards (apt-get install nftables)")
        self.table, self.devices, self.rules, self.log = table, devices, rules, log
        self.sets = {k: (t, sorted(v)) for k, (t, v) in (sets or {}).items()}
        self.nft = OwnedTable("inet", table, log, "chain pre")
        self.start = self.end = None

    # ------------------------------------------------------------------ text
    def _table_text(self, start: int, end: int, owner: bool) -> str:
        devs = ", ".join(f'"{d}"' for d in self.devices)
        flags = "flags owner; " if owner else ""
        rules = " ".join(f"{r};" for r in self.rules)
        sets = "".join(f"set {name} {{ type {t}; flags interval; "
                       + (f"elements = {{ {', '.join(v)} }}; " if v else "") + "}; "
                       for name, (t, v) in self.sets.items())
        return (f"table inet {self.table} {{ {flags}{sets}"
                f"chain window {{ meta time < {start} accept; meta time >= {end} accept; }}; "
                f"chain pre {{ type filter hook prerouting priority raw; policy accept; "
                f"iifname != {{ {devs} }} accept; jump window; {rules} }}; }}")

    def _window_text(self, start: int, end: int) -> str:
        return (f"flush chain inet {self.table} window; "
                f"add rule inet {self.table} window meta time < {start} accept; "
                f"add rule inet {self.table} window meta time >= {end} accept")

    # ------------------------------------------------------------------ life
    def take_over(self, margin: float = 0.25) -> float:
        """Install the table; returns START (epoch seconds), from which mmr forwards."""
        subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True)  # a stale plain one
        start = whole_second_after(time.time(), margin)
        self.nft.install(self._table_text(start, FAR_FUTURE, owner=True),
                         self._table_text(start, FAR_FUTURE, owner=False),
                         "that keeps the kernel from forwarding what mmr forwards")
        self.start, self.end = start, FAR_FUTURE
        if time.time() >= start:
            self.log.warning(f"the kernel guard took longer than {margin} s to install; "
                             f"a few packets may have been forwarded twice")
        return float(start)

    @property
    def owned(self) -> bool:
        return self.nft.owned

    def hand_back(self, margin: float = 0.15) -> float:
        """Give the kernel everything from END on; returns END (epoch seconds)."""
        end = whole_second_after(time.time(), margin)
        self.nft.send(self._window_text(self.start, end))
        self.end = end
        return float(end)

    def set_devices(self, devices: list[str], rules: list[str]) -> None:
        """Other devices (mmr reload added or removed an uplink): the ``pre`` chain rewritten
        in one transaction, so every packet meets the old rules or the new ones, never none."""
        if (devices, rules) == (self.devices, self.rules):
            return
        self.devices, self.rules = devices, rules
        if self.start is None:
            return
        t = self.table
        devs = ", ".join(f'"{d}"' for d in devices)
        self.nft.send("; ".join([f"flush chain inet {t} pre",
                                 f"add rule inet {t} pre iifname != {{ {devs} }} accept",
                                 f"add rule inet {t} pre jump window"]
                                + [f"add rule inet {t} pre {r}" for r in rules]))

    def update_sets(self, sets: dict) -> None:
        """New contents for named sets (one transaction: flush and refill)."""
        cmds = []
        for name, (t, v) in sets.items():
            v = sorted(v)
            if self.sets.get(name, (t, None))[1] == v:
                continue
            self.sets[name] = (t, v)
            cmds.append(f"flush set inet {self.table} {name}")
            if v:
                cmds.append(f"add element inet {self.table} {name} {{ {', '.join(v)} }}")
        if cmds and self.start is not None:
            self.nft.send("; ".join(cmds))

    def close(self) -> None:
        """Remove the table (the kernel forwards everything again)."""
        self.nft.close()
        self.start = None

    def counters(self) -> str:
        return self.nft.listing()
