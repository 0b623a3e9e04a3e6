"""The ``mmr`` command: one sub-command per module in ``engine/commands/``.

Each command module defines ``NAME``, ``HELP`` and ``register(subparsers)``; ``register``
adds its parser and sets ``func`` to a callable taking the parsed args and returning an exit
code.  Errors a user can cause are raised as ``engine.errors.UserError`` and end in one
sentence on stderr with exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from engine import __version__
from engine.errors import UserError

DESCRIPTION = """\
mmr chooses, per flow, the uplink of a multihomed router (draft-park-mis): it reads the IPv6
hop-by-hop traffic control option (service type, preference) or classifies untagged traffic by
DSCP and rules, scores every usable uplink with the metric function F = V_n . V_t of the
flow's preference, and keeps the choice in a flowbase so later packets follow it."""

EPILOG = """\
Every command reads the policy file given with --config; without it, the default policy
shipped with mmr is used ('mmr config --show' prints it).

exit status: 0 success, 1 runtime failure, 2 usage or configuration error."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmr",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mmr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import engine.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"engine.commands.{info.name}")
        if hasattr(mod, "register"):
            mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"mmr {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except (RuntimeError, OSError) as exc:     # the host failed us: one line, status 1
        print(f"mmr {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mmr {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:                   # a fault of mmr's own: one line, the details on demand
        if os.environ.get("MMR_DEBUG"):
            raise
        print(f"mmr {args.command}: internal error ({type(exc).__name__}: {exc}); run again with "
              f"MMR_DEBUG=1 for the details and report them", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
