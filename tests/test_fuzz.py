"""Fuzzing on every CI run, bounded in time (MMR_FUZZ_SECONDS per harness, default 20; CI
sets 60): the compiled parser and rewrite against their references (atheris, coverage-guided
on the instrumented references, from the committed corpus), NAPT44 against its reference
(sessions of templated packets the fuzzer overwrites), and the policy file (mutational).
A longer run is the same command with a longer time (tests/README.md)."""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from engine.config import load_config
from engine.errors import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
SECONDS = float(os.environ.get("MMR_FUZZ_SECONDS", "20"))


def test_frames_fuzz(tmp_path):
    corpus = tmp_path / "frames"
    shutil.copytree(os.path.join(HERE, "corpus", "frames"), corpus)
    p = subprocess.run([sys.executable, os.path.join(HERE, "fuzz", "fuzz_frames.py"),
                        f"-max_total_time={int(SECONDS)}", "-print_final_stats=1", f"-artifact_prefix={tmp_path}/",
                        str(corpus)], capture_output=True, text=True, timeout=SECONDS + 120)
    runs = int(re.search(r"stat::number_of_executed_units:\s+(\d+)", p.stderr).group(1)) if \
        "number_of_executed_units" in p.stderr else 0
    print(f"frames fuzzed: {runs} in {SECONDS:.0f} s, exit {p.returncode}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert runs > 1000


def test_nat_fuzz(tmp_path):
    """NAPT44 sessions (tests/fuzz/fuzz_nat.py): compiled and reference agree on every packet."""
    p = subprocess.run([sys.executable, os.path.join(HERE, "fuzz", "fuzz_nat.py"),
                        f"-max_total_time={int(SECONDS)}", "-print_final_stats=1", f"-artifact_prefix={tmp_path}/"],
                       capture_output=True, text=True, timeout=SECONDS + 120)
    runs = int(re.search(r"stat::number_of_executed_units:\s+(\d+)", p.stderr).group(1)) if \
        "number_of_executed_units" in p.stderr else 0
    print(f"NAT sessions fuzzed: {runs} in {SECONDS:.0f} s, exit {p.returncode}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert runs > 100            # it ran (a session is slow: two translators and the reference)


def test_config_fuzz():
    p = subprocess.run([sys.executable, os.path.join(HERE, "fuzz", "fuzz_config.py"), str(SECONDS),
                        str(int(time.time()) % 100000)], capture_output=True, text=True, timeout=SECONDS + 60)
    assert p.returncode == 0, p.stderr[-3000:]
    counts = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"policy files fuzzed: {counts}")
    assert counts["failures"] == 0 and counts["inputs"] > 1000


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(HERE, "corpus", "config"))))
def test_config_corpus_case_is_one_sentence(name):
    """Every file that once ended in a traceback (or took seconds) now ends in one sentence."""
    t = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_config(os.path.join(HERE, "corpus", "config", name))
    assert "\n" not in str(e.value) and len(str(e.value)) < 400
    assert time.perf_counter() - t < 1.0
