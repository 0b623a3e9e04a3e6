import os
import sys

import dpkt
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from ratio import RESULTS  # noqa: E402

from engine.frames import pack_frames  # noqa: E402
from engine.synth import generate  # noqa: E402


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    terminalreporter.section("mmr ratios (baseline time / mmr time, same run, same data)")
    for r in RESULTS:
        terminalreporter.write_line(r.line())


@pytest.fixture(scope="session")
def mix_pcap(tmp_path_factory):
    """The synth mix used by every benchmark (50k frames, 1500 flows)."""
    p = tmp_path_factory.mktemp("bench") / "mix.pcap"
    generate(str(p), packets=50_000, flows=1_500, seed=42)
    return str(p)


@pytest.fixture(scope="session")
def mix_frames(mix_pcap):
    with open(mix_pcap, "rb") as f:
        recs = [(ts, bytes(buf)) for ts, buf in dpkt.pcap.Reader(f)]
    frames = [b for _, b in recs]
    ts = np.array([t for t, _ in recs])
    return frames, ts, pack_frames(frames)
