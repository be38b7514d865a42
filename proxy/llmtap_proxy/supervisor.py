"""Several proxy processes on one port: `llmtap serve --workers N`.

The supervisor binds the listening sockets (`bind_sockets`: on Linux one per worker, all on the same
port, which the kernel balances; elsewhere one shared socket) and starts N worker processes that
accept from them. It keeps the sockets open, so that a worker's restart loses no queued connection,
and closes them when it stops. Each worker is a fresh interpreter (the
multiprocessing "spawn" start method), so everything with threads or sockets, the OpenTelemetry SDK's
exporters, the finisher thread, the aiohttp session, the event loop, is built inside the worker and
never inherited half-copied from a fork. Each worker runs the same code as a single-process proxy
(`server.serve_worker`) and so drains its streams and flushes its own telemetry on SIGTERM.

The supervisor itself serves nothing. It:
- forwards SIGTERM and SIGINT to the workers as SIGTERM (graceful: stop accepting, drain, flush), waits
  for them up to the drain timeout plus a flush margin, then exits 0 if they all stopped cleanly;
  a second SIGINT (Ctrl-C twice) is forwarded as SIGINT, which makes uvicorn stop without draining;
- replaces a worker that exits on its own (killed, crashed), under the same index, and gives up with
  exit status 1 when workers keep dying (MAX_RESTARTS within RESTART_WINDOW_S);
- asks the kernel (Linux) to send each worker SIGTERM if the supervisor dies, so none is orphaned.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any

from llmtap_proxy.config import Settings

logger = logging.getLogger("llmtap.proxy")

BACKLOG = 2048  # uvicorn's default
FLUSH_MARGIN_S = 15.0  # after the drain: telemetry flush (bounded at 5 s in Telemetry.shutdown) and exit
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
_WORKER_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[w{index}]: %(message)s"


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening socket, bound the way uvicorn binds its own."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)  # connections queue from now on, also while the workers start
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def bind_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """The listening socket of each worker index, all on host:port.

    Linux: one socket per index, joined with SO_REUSEPORT, so that the kernel spreads new connections
    evenly over the workers (by a hash of the connection's addresses). With one shared socket, the
    worker that wakes first takes a whole batch of waiting connections, and a 2:1 split is common.
    The supervisor holds every socket for its lifetime, so connections that wait for a worker being
    replaced stay queued for its successor. Elsewhere (where SO_REUSEPORT does not balance), all
    indexes share one socket."""
    if count > 1 and sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT"):
        first = bind_socket(host, port, reuse_port=True)
        sockets = [first]
        try:
            for _ in range(count - 1):
                sockets.append(bind_socket(host, first.getsockname()[1], reuse_port=True))
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        return sockets
    return [bind_socket(host, port)] * count


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGTERM this worker when the supervisor dies (then it drains and flushes, as on any SIGTERM)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # it died before the request above
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(settings: Settings, sock: socket.socket, index: int, log_level: int, parent_pid: int) -> None:
    """A worker's entry point, in the new process."""
    logging.basicConfig(level=log_level, format=_WORKER_LOG_FORMAT.format(index=index))
    _die_with_parent(parent_pid)
    from llmtap_proxy.server import serve_worker

    serve_worker(settings, sockets=[sock], worker_index=index)


class Supervisor:
    def __init__(self, settings: Settings, sockets: list[socket.socket], log_level: int) -> None:
        self.settings = settings
        self.sockets = sockets  # by worker index
        self.log_level = log_level
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, BaseProcess] = {}
        self.started_at: dict[int, float] = {}
        self.restarts: collections.deque[float] = collections.deque()
        self.stopping = False
        self.stop_signal: int | None = None

    # --- workers ---
    def start(self, index: int) -> None:
        process = self.context.Process(
            target=_worker_main, name=f"llmtap-worker-{index}",
            args=(self.settings, self.sockets[index], index, self.log_level, os.getpid()),
        )
        process.start()
        self.workers[index] = process
        self.started_at[index] = time.monotonic()
        logger.info("worker %d started (pid %d)", index, process.pid)

    def signal_workers(self, signum: int) -> None:
        for process in self.workers.values():
            if process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    def on_signal(self, signum: int, _frame: Any) -> None:
        # Only flags and kill() here; the main loop does the logging.
        if not self.stopping:
            self.stopping = True
            self.stop_signal = signum
            self.signal_workers(signal.SIGTERM)
        elif signum == signal.SIGINT:
            self.signal_workers(signal.SIGINT)  # a second Ctrl-C: stop now, without draining

    def replace_dead(self) -> bool:
        """Start a new worker for each one that exited; False when they die too often to go on."""
        now = time.monotonic()
        for index, process in list(self.workers.items()):
            if process.exitcode is None:
                continue
            process.join()
            logger.warning("worker %d (pid %d) exited with status %s after %.1f s; starting a new one",
                           index, process.pid, _status(process.exitcode), now - self.started_at[index])
            self.restarts.append(now)
            while self.restarts and self.restarts[0] < now - RESTART_WINDOW_S:
                self.restarts.popleft()
            if len(self.restarts) > MAX_RESTARTS:
                logger.error("workers exited %d times within %.0f s; giving up", len(self.restarts),
                             RESTART_WINDOW_S)
                return False
            self.start(index)
        return True

    def close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()

    def stop_all(self) -> bool:
        """SIGTERM every worker, wait for them to drain and flush; kill any that outlive the deadline.
        True when all of them stopped cleanly."""
        self.signal_workers(signal.SIGTERM)  # also reaches a worker started after the signal came
        deadline = time.monotonic() + self.settings.drain_timeout + FLUSH_MARGIN_S
        while any(p.exitcode is None for p in self.workers.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            wait([p.sentinel for p in self.workers.values() if p.exitcode is None], timeout=remaining)
        clean = True
        for index, process in sorted(self.workers.items()):
            if process.exitcode is None:
                logger.error("worker %d (pid %d) did not stop within the deadline; killing it", index, process.pid)
                process.kill()
                process.join()
                clean = False
            elif process.exitcode not in (0, -signal.SIGTERM):  # -SIGTERM: it was still starting up
                logger.error("worker %d (pid %d) stopped with status %s", index, process.pid,
                             _status(process.exitcode))
                clean = False
        return clean

    def run(self) -> int:
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        previous_wakeup = signal.set_wakeup_fd(wake_write)
        previous = {signum: signal.signal(signum, self.on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self.settings.workers):
                if self.stopping:
                    break
                self.start(index)
            host, port = self.sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            logger.info("%d workers serving http://%s:%d (supervisor pid %d)", len(self.workers), shown, port,
                        os.getpid())
            healthy = True
            while not self.stopping:
                wait([wake_read] + [p.sentinel for p in self.workers.values()])
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_read, 512):
                        pass
                if not self.stopping and not self.replace_dead():
                    healthy = False
                    break
            # New connections are refused from now on (once the workers have closed their copies, which
            # uvicorn does first thing on SIGTERM), as with a single process.
            self.close_sockets()
            if self.stop_signal is not None:
                logger.info("%s: stopping %d workers (each drains for up to %.0f s, then flushes its telemetry)",
                            signal.Signals(self.stop_signal).name, len(self.workers), self.settings.drain_timeout)
            clean = self.stop_all()
            logger.info("all workers stopped")
            return 0 if healthy and clean else 1
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_wakeup)
            os.close(wake_read)
            os.close(wake_write)


def _status(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-exitcode).name
    return str(exitcode)


def supervise(settings: Settings) -> int:
    """Run `settings.workers` workers on one port until SIGTERM/SIGINT. Returns the exit status."""
    try:
        sockets = bind_sockets(settings.host, settings.port, settings.workers)
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror or exc)
        return 1
    for route in settings.routes:
        logger.info("route %s -> %s%s", route.prefix, route.upstream.origin, route.upstream.base_path)
    supervisor = Supervisor(settings, sockets, logging.getLogger().getEffectiveLevel())
    try:
        return supervisor.run()
    finally:
        supervisor.close_sockets()
