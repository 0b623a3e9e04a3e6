"""Mutational fuzzing of the policy file: every mutation of the built-in policies must load
or end in a ConfigError (one sentence), quickly; nothing else may escape.

    python3 tests/fuzz/fuzz_config.py SECONDS [SEED]      # prints one JSON line of counts

A failing input is written to tests/corpus/config/crash-<n>.toml (commit it: it becomes a
regression case)."""
import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)

from engine.config import _Loader, resources  # noqa: E402
from engine.errors import ConfigError  # noqa: E402
from mutate import mutate  # noqa: E402

SLOW_S = 1.0


def check(text_bytes: bytes) -> str:
    try:
        text = text_bytes.decode("utf-8")
    except UnicodeDecodeError:
        return "not-utf8"
    t = time.perf_counter()
    try:
        _Loader("<fuzz>").load(text)
        result = "loaded"
    except ConfigError as exc:
        if "\n" in str(exc):
            raise AssertionError(f"a ConfigError of several lines: {exc!r}")
        result = "config-error"
    if time.perf_counter() - t > SLOW_S:
        raise AssertionError(f"took {time.perf_counter() - t:.1f} s")
    return result


def main(seconds: float, seed: int = 1) -> int:
    seeds = [resources.files("engine").joinpath(n).read_bytes() for n in ("default.toml", "default-host.toml")]
    corpus = os.path.join(HERE, "..", "corpus", "config")
    seeds += [open(os.path.join(corpus, f), "rb").read() for f in sorted(os.listdir(corpus))]
    rng = random.Random(seed)
    counts = {"inputs": 0, "loaded": 0, "config-error": 0, "not-utf8": 0, "failures": 0}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        data = mutate(rng.choice(seeds), rng)
        counts["inputs"] += 1
        try:
            counts[check(data)] += 1
        except Exception as exc:                 # anything else is a bug: keep the input
            counts["failures"] += 1
            path = os.path.join(corpus, f"crash-{counts['failures']}.toml")
            with open(path, "wb") as f:
                f.write(data)
            print(f"{type(exc).__name__}: {exc}; input saved as {path}", file=sys.stderr)
    print(json.dumps(counts))
    return 1 if counts["failures"] else 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1))
