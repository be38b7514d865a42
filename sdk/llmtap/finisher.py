"""Ending calls on a thread of their own, off the application's thread and off the proxy's event loop."""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from typing import Any

from llmtap.observer import CallObserver

logger = logging.getLogger("llmtap.finisher")


class Finisher:
    """Ends calls on a thread of its own.

    Ending a call counts tokens, derives the figures, ends the span and records the histograms (one
    record per inter-chunk gap): about a millisecond per call plus ~15 us per content chunk with the
    OpenTelemetry Python SDK, which the application's thread (or event loop) should not wait for.
    Calls whose body was dropped without close() come here too: the garbage collector's context may hold
    locks that ending a span needs, so the finaliser only records the time and queues the call
    (SimpleQueue.put is safe there).
    """

    MAX_BACKLOG = 128  # beyond this, calls are ended in line (back-pressure; bounds memory when starved)

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._atexit = False

    def ensure_started(self) -> None:
        if self.thread is not None:
            return
        with self._lock:
            if self.thread is None:
                thread = threading.Thread(target=self._run, name="llmtap-finisher", daemon=True)
                thread.start()
                self.thread = thread
                if not self._atexit:
                    self._atexit = True
                    atexit.register(self.flush, 2.0)

    def _run(self) -> None:
        _lowest_cpu_priority()
        get = self.queue.get
        while True:
            item = get()
            try:
                if isinstance(item, threading.Event):
                    item.set()
                else:
                    function, argument, t_ns = item
                    function(argument, t_ns)
            except Exception:
                logger.debug("ending a call failed", exc_info=True)
            # Hand the interpreter lock over between calls: a burst of calls ending together must
            # not hold up the event loop that forwards the next chunks and requests.
            time.sleep(0)

    def finish(self, call: CallObserver, error_type: str | None, t_ns: int) -> None:
        if self.thread is not None and self.queue.qsize() < self.MAX_BACKLOG:
            self.queue.put((call.finish, error_type, t_ns))
        else:
            call.finish(error_type, t_ns)

    def read_request(self, call: CallObserver) -> None:
        """Parse the call's request body on this thread, in call order (cold starts are decided there)."""
        if self.thread is not None and self.queue.qsize() < self.MAX_BACKLOG:
            self.queue.put((_read_request, call, 0))
        else:
            call.read_request()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the calls queued so far have ended."""
        if self.thread is None:
            return True
        done = threading.Event()
        self.queue.put(done)
        return done.wait(timeout)

    def after_fork(self) -> None:
        self.queue = queue.SimpleQueue()
        self.thread = None
        self._lock = threading.Lock()


def _read_request(call: CallObserver, _t_ns: int) -> None:
    call.read_request()


def _lowest_cpu_priority() -> None:
    """Run this thread only on CPU time nobody else wants (Linux SCHED_IDLE, else the highest nice).

    Ending calls is bursty (many streams end together) but never urgent; forwarding is. On one core,
    an ordinary-priority finisher would take half the CPU from the event loop during a burst. The
    backlog bound in `finish` keeps a starved finisher from growing without limit.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0 = this thread on Linux
        return
    except (AttributeError, OSError):
        pass
    try:
        os.nice(19)
    except OSError:
        pass


FINISHER = Finisher()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=FINISHER.after_fork)
