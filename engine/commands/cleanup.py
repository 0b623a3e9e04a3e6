"""mmr cleanup: remove what a killed mmr left in this network namespace's kernel."""
from __future__ import annotations

import argparse
import shutil
import subprocess

from engine.errors import UserError

NAME = "cleanup"

DESC = """\
Undo what an mmr that died without a clean stop left in the kernel of this network namespace,
so that the kernel forwards everything again.

Normally nothing is left: mmr's nftables tables (inet mmr for 'mmr run', inet mmrhost for
'mmr host', inet mmrtag and ip6 mmrtagq for 'mmr tag') are created with 'flags owner' and the kernel removes them the moment mmr dies,
however it dies (SIGKILL, the OOM killer).  On a kernel or nft without owner tables mmr
falls back to a plain table (and logs a warning at start); after a crash that table stays
and keeps the kernel from forwarding.  'mmr cleanup' removes it.  The next start of mmr
removes it too.  mmr changes nothing else in the kernel that outlives it: no sysctls, no
offload settings, and the TUN device of 'mmr host' goes with its file descriptor."""

EPILOG = """\
A table that a running mmr owns is left alone (the kernel refuses to remove it); the
line names it.  Stop that mmr instead (it hands its packets back to the kernel).

examples:
  mmr cleanup
  ip netns exec mmr-mmr mmr cleanup

exit status: 0 nothing left or removed, 1 a table is held by a running mmr, 2 no nftables or
not permitted (needs root or CAP_NET_ADMIN)."""

TABLES = (("inet", "mmr"), ("inet", "mmrhost"), ("inet", "mmrtag"), ("ip6", "mmrtagq"))


def register(sub) -> None:
    p = sub.add_parser(NAME, help="remove what a killed mmr left in the kernel (a plain nftables table)",
                       description=DESC, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=run)


def run(args) -> int:
    if shutil.which("nft") is None:
        raise UserError("nftables ('nft') is not installed, so mmr cannot have left a table here")
    rc = 0
    failed: list[str] = []
    for family, name in TABLES:
        listed = subprocess.run(["nft", "list", "table", family, name], capture_output=True, text=True)
        if listed.returncode != 0:
            if "Operation not permitted" in listed.stderr:
                raise UserError("reading nftables needs root or CAP_NET_ADMIN; run mmr cleanup as root")
            print(f"{family} {name}: not present")
            continue
        if "flags owner" in listed.stdout:
            print(f"{family} {name}: owned by a running mmr; stop it instead (it hands back to the kernel)")
            rc = 1
            continue
        gone = subprocess.run(["nft", "delete", "table", family, name], capture_output=True, text=True)
        if gone.returncode != 0:
            if "Operation not permitted" in gone.stderr or "busy" in gone.stderr:
                # an nft that does not print "flags owner": the kernel refuses for the owner
                print(f"{family} {name}: held by a running mmr (the kernel refuses to remove it); stop it instead")
                rc = 1
                continue
            failed.append(f"{family} {name} ({(gone.stderr.strip().splitlines() or ['nft gave no reason'])[0]})")
            continue
        print(f"{family} {name}: removed (a plain table left by an mmr that did not stop cleanly)")
    if failed:
        raise UserError(f"could not remove {', '.join(failed)}")
    return rc
