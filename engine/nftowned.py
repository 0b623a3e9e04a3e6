"""An nftables table that lives exactly as long as this process.

The table is created with ``flags owner`` by an ``nft -i`` child whose standard input is a
pipe from mmr: when mmr dies, however it dies, the pipe closes, nft exits and the kernel
removes the table with its owner.  Later changes go down the same pipe (only the owner may
change an owned table).  Kernels or nft versions without the flag get a plain table
(logged), changed with ``nft -f`` and removed at a clean stop only ('mmr cleanup' or the
next start removes one a crash left).  Used by the kernel guard (engine/guard.py) and by
mmr tag (engine/tagger.py).
"""
from __future__ import annotations

import os
import subprocess
import time

from engine.errors import UserError


class OwnedTable:
    def __init__(self, family: str, name: str, log, marker: str):
        """``marker``: text that ``nft list table`` shows once the table is complete (a chain)."""
        self.family, self.name, self.log, self.marker = family, name, log, marker
        self.proc: subprocess.Popen | None = None
        self.owned = self.installed = False

    @property
    def ident(self) -> str:
        return f"{self.family} {self.name}"

    def install(self, owned_text: str, plain_text: str, what: str) -> None:
        """Create the table (``owned_text`` has ``flags owner``); on refusal fall back to
        ``plain_text``.  ``what``: what the table is for, for the error sentence."""
        # its own session: a Ctrl-C or a service stop signals mmr's process group, and the
        # table must stay until mmr is done with it; the pipe still ends it with mmr
        self.proc = subprocess.Popen(["nft", "-i"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, bufsize=1, start_new_session=True)
        os.set_blocking(self.proc.stderr.fileno(), False)
        self._send(owned_text)
        if self._present(2.0):
            self.owned = self.installed = True
            return
        err = self._errors()
        self._end_child()
        p = subprocess.run(["nft", "-f", "-"], input=plain_text + "\n", capture_output=True, text=True)
        if p.returncode != 0:
            raise UserError(f"cannot install the nftables table {what} ({(p.stderr or err).strip()}); "
                            f"check that nftables works here")
        self.installed = True
        self.log.warning(f"nftables refused an owned table ({err.strip() or 'no reason given'}); the table "
                         f"'{self.ident}' stays if mmr is killed: remove it with 'mmr cleanup' or "
                         f"'nft delete table {self.ident}'")

    def send(self, commands: str) -> None:
        """nft commands for the installed table (down the owner's pipe, or nft -f)."""
        if self.owned:
            self._send(commands)
        elif self.installed:
            subprocess.run(["nft", "-f", "-"], input=commands + "\n", capture_output=True, text=True)

    def listing(self) -> str:
        p = subprocess.run(["nft", "list", "table", self.family, self.name], capture_output=True, text=True)
        return p.stdout if p.returncode == 0 else ""

    def close(self) -> None:
        """Remove the table: end the owner (the kernel removes an owned table), or delete a
        plain one."""
        self._end_child()
        if self.installed and not self.owned:
            subprocess.run(["nft", "delete", "table", self.family, self.name], capture_output=True)
        self.installed = False

    # ------------------------------------------------------------------ the child
    def _end_child(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def _send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError, AttributeError):
            pass

    def _errors(self) -> str:
        try:
            return self.proc.stderr.read() or ""
        except (OSError, TypeError, ValueError):
            return ""

    def _present(self, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self.marker in self.listing():
                return True
            time.sleep(0.02)
        return False
