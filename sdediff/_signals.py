"""Deferring SIGINT / SIGTERM: the trainer finishes its step and writes a checkpoint before it stops."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Iterator

__all__ = ["SignalCatcher"]

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))


class SignalCatcher:
    """While active (main thread only), SIGINT/SIGTERM set ``signum`` instead of interrupting; a
    second signal goes straight on (press Ctrl-C twice to abort at once)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    @contextlib.contextmanager
    def active(self) -> Iterator[SignalCatcher]:
        """Install the handlers for the ``with`` block; the previous ones come back on exit."""
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                before = signal.getsignal(sig)
                if before is not None and before != signal.SIG_IGN:  # else: not ours to handle
                    self.previous[sig] = before
                    signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, before in self.previous.items():
                signal.signal(sig, before)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            signal.signal(signum, self.previous[signum])
            self.deliver(signum)
        self.signum = signum

    def deliver(self, signum: int | None = None) -> None:
        """Pass the caught signal on to the previous handler (SIG_DFL: KeyboardInterrupt / end the process)."""
        signum = self.signum if signum is None else signum
        handler = self.previous.get(signum, signal.SIG_DFL)
        if callable(handler):
            handler(signum, None)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
