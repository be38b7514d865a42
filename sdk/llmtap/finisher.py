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

    # Queued items beyond which new calls are parsed and ended in line (back-pressure; bounds memory
    # when this thread is starved). A proxied call queues its request facts, a batch per 32 chunks,
    # then its end: 512 lets a few hundred streams that end together wait here, not on the loop.
    MAX_BACKLOG = 512

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
        # A call whose parsing is queued here ends here too, after it: its parts stay in order.
        if call.on_finisher or (self.thread is not None and self.queue.qsize() < self.MAX_BACKLOG):
            self.queue.put((call.finish, error_type, t_ns))
        else:
            call.finish(error_type, t_ns)

    def read_request(self, call: CallObserver) -> bool:
        """Take on a proxied call: its request facts now (in call order: cold starts are decided
        there), its response in batches, its end. False (the caller parses in line) when backlogged."""
        if self.thread is not None and self.queue.qsize() < self.MAX_BACKLOG:
            self.queue.put((_read_request, call, 0))
            return True
        return False

    def parse(self, call: CallObserver, batch: list[tuple[bytes, int]]) -> None:
        self.queue.put((_parse_batch, call, batch))

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


def _parse_batch(call: CallObserver, batch: list[tuple[bytes, int]]) -> None:
    call.parse_batch(batch)


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
