"""The engine's log: stdlib ``logging`` (logger ``mmr``) with levels, written by a thread so
that a slow reader of stderr (a full pipe, a stalled journal) can never stop the forwarding
loop.  Records go to a bounded queue; when it is full a record is dropped and counted, and
the count is logged once there is room again.

    engine code --Log.info/warning/error()--> logging.Logger("mmr") --> _DroppingQueueHandler
        --> queue (1000 records) --> QueueListener thread --> stderr

Lines read ``mmr: <message>``, ``mmr: warning: <message>``, ``mmr: error: <message>``.  Under
systemd (stderr is the journal: ``$JOURNAL_STREAM`` names it) each line starts with the
syslog priority, ``<4>mmr: warning: ...``, so journald files it at its level
(``journalctl -u mmr -p warning``).  ``--log-level`` sets the threshold (default info).
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import sys

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_PREFIX = {logging.DEBUG: "debug: ", logging.INFO: "", logging.WARNING: "warning: ",
           logging.ERROR: "error: ", logging.CRITICAL: "error: "}
_SYSLOG = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def stream_is_journal(stream) -> bool:
    """True when ``stream`` is the journal's socket systemd gave us (sd_journal_stream_fd(3):
    ``$JOURNAL_STREAM`` is ``device:inode`` of that socket)."""
    js = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in js.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return st.st_dev == dev and st.st_ino == ino


class LineFormatter(logging.Formatter):
    """``mmr: warning: text``; with ``journal``, ``<4>mmr: warning: text``."""

    def __init__(self, journal: bool = False, name: str = "mmr"):
        super().__init__()
        self.journal, self.name = journal, name

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.name}: {_PREFIX.get(record.levelno, '')}{record.getMessage()}"
        return f"<{_SYSLOG.get(record.levelno, 6)}>{line}" if self.journal else line


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """put_nowait; a full queue drops the record and counts it (never blocks, never prints
    a traceback the way QueueHandler.handleError would)."""

    def __init__(self, q: queue.Queue):
        super().__init__(q)
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            if self.dropped:
                note = logging.LogRecord("mmr", logging.WARNING, __file__, 0,
                                         "%d log line(s) dropped (stderr was not read)", (self.dropped,), None)
                self.queue.put_nowait(self.prepare(note))
                self.dropped = 0
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _TolerantStreamHandler(logging.StreamHandler):
    def handleError(self, record) -> None:   # a closed or broken stderr: the line is lost, quietly
        pass


class Log:
    """``log(text)`` logs at info; ``log.debug/info/warning/error(text)`` at their level.
    Texts are complete sentences without the ``mmr:`` prefix (the formatter adds it)."""

    def __init__(self, stream=None, capacity: int = 1000, level: str | int = "info", name: str = "mmr"):
        self.stream = stream if stream is not None else sys.stderr
        self.q: queue.Queue = queue.Queue(capacity)
        self.handler = _DroppingQueueHandler(self.q)
        # one logger object per Log (engines in one process, tests) that still reports as "mmr"
        self.logger = logging.Logger("mmr")
        self.logger.propagate = False
        self.logger.addHandler(self.handler)
        self.set_level(level)
        out = _TolerantStreamHandler(self.stream)
        out.setFormatter(LineFormatter(stream_is_journal(self.stream), name))
        self.listener = logging.handlers.QueueListener(self.q, out)
        self.listener.start()

    def set_level(self, level: str | int) -> None:
        if isinstance(level, str):
            if level.lower() not in LEVELS:
                from engine.errors import UserError
                raise UserError(f"--log-level {level}: use one of {', '.join(LEVELS)}")
            level = LEVELS[level.lower()]
        self.logger.setLevel(level)

    @property
    def dropped(self) -> int:
        return self.handler.dropped

    def __call__(self, text: str) -> None:
        self.logger.info(text)

    def debug(self, text: str) -> None:
        self.logger.debug(text)

    def info(self, text: str) -> None:
        self.logger.info(text)

    def warning(self, text: str) -> None:
        self.logger.warning(text)

    def error(self, text: str) -> None:
        self.logger.error(text)

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued, then stop the thread.  (QueueListener.stop() waits without a
        bound; a stalled stderr must not hold the exit, so the thread is joined with a timeout.)"""
        try:
            self.q.put(self.listener._sentinel, timeout=timeout)
        except queue.Full:
            return
        thread = self.listener._thread
        if thread is not None:
            thread.join(timeout)
        self.listener._thread = None
