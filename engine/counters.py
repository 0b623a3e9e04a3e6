"""The one counter table of the data path, declared once.

One uint64 array per engine: first the reason codes of engine.constants.REASONS (every
frame that is dropped has exactly one reason; "kernel" reasons are frames left to the
host; "forward" ones are notes), then the events below.  The compiled stages count into it
by index (pyx/engine/_forward.pxd mirrors the order; tests/test_contract.py checks they
agree); the summary line, ``mmr status`` and the Prometheus metrics all read it through
``snapshot()``, so a counter is named and reported one way everywhere.
"""
from __future__ import annotations

import numpy as np

from engine import constants as C

# (name, help): events counted by the data path, after the reasons
EVENTS = [
    ("rx_inside", "frames read from the LAN (mmr run) or the virtual interface (mmr host)"),
    ("rx_uplink", "frames read from the uplinks"),
    ("tx_uplink", "frames handed to the uplinks"),
    ("tx_inside", "frames handed to the LAN or the virtual interface"),
    ("kernel", "frames left to this machine's kernel: for itself, multicast, link-local, not for the LAN"),
    ("handover", "frames the kernel forwarded while mmr was taking over or handing back"),
    ("csum_finished", "unfinished checksums (a sender's offload) mmr completed"),
    ("super_frames", "GSO super-frames passed on for the kernel to segment"),
    ("icmp_sent", "ICMP errors mmr sent: time exceeded, packet too big, parameter problem"),
    ("icmp_limited", "ICMP errors not sent: over the rate limit (1000/s, burst 50)"),
    ("neighbour_asked", "neighbour resolutions mmr asked the kernel for"),
    ("tx_errors", "frames a device refused (sendmmsg or write failed)"),
    ("truncated", "frames longer than a ring slot that the kernel could not queue whole: dropped"),
    ("ring_drops", "frames the kernel dropped because a ring was full"),
    ("internal_errors", "errors inside mmr's own control work (logged); the forwarding went on"),
    ("untrusted_option", "options asking for a service or preference their [[trust]] prefix may not: "
                         "classified as untagged"),
    ("reserved_preference", "options asking for a preference a pin ([[rule]] uplink) uses: preference 0"),
    ("lan_gone", "times the LAN device vanished (mmr run): nothing is read from or sent to the LAN until a "
                 "device of its name is back"),
]
N_EVENTS = len(EVENTS)
NAMES = list(C.REASON_NAMES) + [name for name, _ in EVENTS]
INDEX = {name: i for i, name in enumerate(NAMES)}
SIZE = len(NAMES)
HELP = {**{name: f"frames with reason {name}" for name in C.REASON_NAMES}, **dict(EVENTS)}
DROP_REASONS = [name for code, name, action in C.REASONS if action == "drop"]


def new_table() -> np.ndarray:
    return np.zeros(SIZE, np.uint64)


def snapshot(table: np.ndarray) -> dict[str, int]:
    """Every counter by name, zeros included."""
    return {name: int(table[i]) for i, name in enumerate(NAMES)}


def drops(table: np.ndarray) -> dict[str, int]:
    """Dropped frames by reason, every reason (zeros included)."""
    return {name: int(table[INDEX[name]]) for name in DROP_REASONS}


def logfmt(table: np.ndarray, keys: list[str], with_drops: bool = True) -> str:
    """key=value for the named counters, then drop_<reason>=N for every non-zero drop."""
    parts = [f"{k}={int(table[INDEX[k]])}" for k in keys]
    if with_drops:
        parts += [f"drop_{k}={v}" for k, v in drops(table).items() if v]
    return " ".join(parts)
