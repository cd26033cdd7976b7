"""How a stand-in process runs: its HTTP server in a thread, its poll loop in the main one,
both until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from http.server import HTTPServer
from typing import Any


def serve_and_poll(
    server: HTTPServer, tick: Callable[[], None], interval: float, log: logging.Logger
) -> None:
    """Serve in a thread and call `tick` every `interval` seconds until a stop signal."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal=%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    try:
        while True:
            tick()
            if stop.wait(interval):
                break
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    log.info("stopped")
