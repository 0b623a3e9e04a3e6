"""A small mutational fuzzer for text inputs (policy files, control requests): byte flips,
deletions, duplications, splices of dictionary tokens.  Deterministic for a seed."""
from __future__ import annotations

import random

TOKENS = [b"[", b"]", b"{", b"}", b"=", b",", b"\"", b"'", b"\n", b".", b"-", b"0x", b"nan", b"inf", b"-inf",
          b"true", b"null", b"[[", b"]]", b"9" * 400, b"\xc2\xb2", b"\xd9\xa4", b"1e999", b"[" * 200,
          b"{\"cmd\": ", b"\"status\"", b"\"flows\"", b"\"limit\": ", b"\"uplink\": ", b"\\u0000", b"#"]


def mutate(data: bytes, rng: random.Random, rounds: int | None = None) -> bytes:
    b = bytearray(data)
    for _ in range(rounds or rng.randint(1, 6)):
        op = rng.randrange(6)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:                                  # flip a byte
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op == 1 and b:                                # delete a run
            del b[i:i + rng.randint(1, 16)]
        elif op == 2:                                      # insert a token
            b[i:i] = rng.choice(TOKENS)
        elif op == 3 and b:                                # duplicate a run
            j = rng.randrange(len(b))
            b[i:i] = b[j:j + rng.randint(1, 64)]
        elif op == 4:                                      # a random digit string
            b[i:i] = str(rng.choice([0, 1, -1, 65535, 65536, 2**31, 2**64, 10**30])).encode()
        elif op == 5 and b:                                # truncate
            del b[i:]
    return bytes(b)
