"""Side-by-side timing for the performance gates: mmr and its baseline, same run, same data.

``compare(mmr_fn, base_fn, items)`` times both alternately (interleaved rounds so a noisy
neighbour hurts both alike), keeps the best round of each, and returns nanoseconds per item
and the speed ratio baseline/mmr (> 1 means mmr is faster).  Gates assert ratios only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Ratio:
    name: str
    items: int
    mmr_ns: float       # best ns per item, mmr
    base_ns: float      # best ns per item, baseline
    baseline: str

    @property
    def ratio(self) -> float:
        return self.base_ns / self.mmr_ns

    def line(self) -> str:
        return (f"{self.name}: mmr {self.mmr_ns:,.1f} ns/item, {self.baseline} "
                f"{self.base_ns:,.1f} ns/item, ratio {self.ratio:,.2f}x over {self.items} items")


RESULTS: list = []           # Ratio and Figure rows, printed at the end of the run (conftest.py)


def best_time(fn, min_time=0.05) -> float:
    """Seconds of one call of fn, best of a short series (at least ``min_time`` in all)."""
    best = float("inf")
    spent = 0.0
    runs = 0
    while spent < min_time or runs < 3:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        runs += 1
    return best


def compare(name, mmr_fn, base_fn, items, baseline="baseline", rounds=5, min_time=0.05) -> Ratio:
    mmr_best = base_best = float("inf")
    for _ in range(rounds):
        mmr_best = min(mmr_best, best_time(mmr_fn, min_time))
        base_best = min(base_best, best_time(base_fn, min_time))
    r = Ratio(name, items, mmr_best / items * 1e9, base_best / items * 1e9, baseline)
    RESULTS.append(r)
    return r


@dataclass
class Figure:
    """A measured figure that is not a timing ratio (latency, loss, an outage), reported as is."""
    name: str
    text: str

    def line(self) -> str:
        return f"{self.name}: {self.text}"
