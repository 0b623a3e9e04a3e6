"""Hostile captures: the regression corpus (tests/corpus/captures/) through the CLI, and the
capture fuzzer (tests/fuzz/fuzz_captures.py) for MMR_FUZZ_SECONDS (default 5 here; CI may
set more), which also holds the compiled pcap walker to its reference on every input that
starts like a pcap (tests/test_pcapwalk.py has the property tests).  Every capture ends in a summary or in one sentence with exit status 2, never in
a traceback or an "internal error".

The corpus file names say what each must give now:

  ok-*       exit 0, summary, no warning      (sll/sll2/raw: refused before as "not Ethernet";
                                               ts-sec-past-2038: struct.error from the --out
                                               writer, "internal error" exit 1)
  warn-*     exit 0, summary with a warning   (ts-*: struct.error under --out before, exit 1,
                                               except usec-over-million which was silently
                                               shifted; cut-short-*: unchanged)
  corrupt-*  exit 2, the summary of what came before, then "... is corrupt at byte N ..."
                                              (all were reported as "cut short", exit 0)
  bad-*      exit 2, one sentence, nothing replayed (unchanged: kept as regression cases)
  crash-*    inputs the fuzzer saved: exit 0 or 2, one sentence (crash-1..3: found by this
             fuzzer against the replay before these fixes: struct.error "argument out of
             range" / "'I' format requires ..." from dpkt's writer, i.e. "internal error")
"""
import json
import os
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus", "captures")
SECONDS = float(os.environ.get("MMR_FUZZ_SECONDS", "5"))
sys.path.insert(0, os.path.join(HERE, "fuzz"))


def out_records(out_dir):
    """Records in the --out pcaps, read to the end by libpcap."""
    import pcapy

    n = 0
    for name in sorted(os.listdir(out_dir)):
        r = pcapy.open_offline(os.path.join(out_dir, name))
        while r.next()[0] is not None:
            n += 1
    return n


@pytest.mark.parametrize("name", sorted(os.listdir(CORPUS)))
def test_corpus_capture_ends_in_a_summary_or_one_sentence(name, tmp_path):
    kind = name.split("-", 1)[0]
    assert kind in ("ok", "warn", "corrupt", "bad", "crash"), f"{name}: name it by what it must give"
    out = tmp_path / "out"
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "engine", "replay", os.path.join(CORPUS, name), "--json",
                        "--out", str(out), "--flows", str(tmp_path / "flows.csv")],
                       capture_output=True, text=True, timeout=60)
    assert time.perf_counter() - t < 20
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr
    assert p.returncode in (0, 2), p.stderr
    if p.returncode == 2:
        assert p.stderr.count("\n") == 1 and p.stderr.startswith("mmr replay: "), p.stderr
    else:
        assert p.stderr == ""
    if kind == "bad":
        assert p.returncode == 2 and p.stdout == ""
        return
    if kind == "crash" and p.returncode == 2 and not p.stdout:
        return                                  # refused before reading: one sentence, checked
    s = json.loads(p.stdout)
    assert out_records(out) == s["packets"] - s["kernel"]
    warned = "truncated" in s or "timestamps" in s
    if kind == "ok":
        assert p.returncode == 0 and not warned and "corrupt" not in s and s["packets"] > 0
    elif kind == "warn":
        assert p.returncode == 0 and warned and "corrupt" not in s
    elif kind == "corrupt":
        assert p.returncode == 2 and s["corrupt"]["at_byte"] > 0
        assert f"is corrupt at byte {s['corrupt']['at_byte']} of " in p.stderr
        assert s["packets"] > 0                  # what came before the bad record is reported
        assert len(open(tmp_path / "flows.csv").read().splitlines()) == s["flows"] + 1


def test_capture_fuzz():
    """Mutated captures, in-process, for MMR_FUZZ_SECONDS: no failure, many inputs."""
    p = subprocess.run([sys.executable, os.path.join(HERE, "fuzz", "fuzz_captures.py"), str(SECONDS),
                        str(int(time.time()) % 100000)], capture_output=True, text=True,
                       timeout=SECONDS + 120)
    assert p.returncode == 0, p.stderr[-3000:]
    counts = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"captures fuzzed: {counts}")
    assert counts["failures"] == 0 and counts["inputs"] > 100 * min(SECONDS, 10)
    assert counts["summary"] > 0 and counts["corrupt"] > 0 and counts["user-error"] > 0
    assert counts["walked"] > counts["inputs"] // 4      # compiled walker vs its reference


def test_capture_fuzzer_keeps_what_escapes(tmp_path, monkeypatch):
    """The harness itself: an exception that is not a UserError, or an error of several lines,
    is a failure, and the input is kept as crash-N.pcap."""
    import fuzz_captures as fc
    from engine.errors import UserError

    class Escapes:
        calls = 0

        def __init__(self, *a, **k):
            pass

        def run(self):
            Escapes.calls += 1
            if Escapes.calls % 2:
                raise ValueError("a fault of mmr's own")
            raise UserError("two\nlines")

    monkeypatch.setattr(fc, "CORPUS", str(tmp_path))
    monkeypatch.setattr(fc, "Replay", Escapes)
    assert fc.main(0.3, 1) == 1
    kept = sorted(os.listdir(tmp_path))
    assert len(kept) == Escapes.calls >= 2 and kept[0] == "crash-1.pcap"
