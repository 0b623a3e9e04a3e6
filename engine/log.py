"""The engine's log: lines go to a queue and a thread writes them, so a slow reader of
stderr (a full pipe, a stalled journal) can never stop the forwarding loop.  When the queue
is full a line is dropped and counted; the count is logged once there is room again."""
from __future__ import annotations

import queue
import sys
import threading


class Log:
    def __init__(self, stream=None, capacity: int = 1000):
        self.stream = stream if stream is not None else sys.stderr
        self.q: queue.Queue = queue.Queue(capacity)
        self.dropped = 0
        self.thread = threading.Thread(target=self._write, name="mmr-log", daemon=True)
        self.thread.start()

    def __call__(self, line: str) -> None:
        try:
            if self.dropped:
                self.q.put_nowait(f"mmr: {self.dropped} log line(s) dropped (stderr was not read)")
                self.dropped = 0
            self.q.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def _write(self) -> None:
        while True:
            line = self.q.get()
            if line is None:
                return
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (waiting at most ``timeout``), then stop the thread."""
        try:
            self.q.put(None, timeout=timeout)
        except queue.Full:
            return
        self.thread.join(timeout)
