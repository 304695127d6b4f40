"""Rate limiting of repeated log records, for client libraries that log once per retry.

During a broker outage aiokafka logs an error for every retry of every client, several lines a
second, which buries whatever else the process says. The first record of a kind tells the
operator what is wrong; after that, one reminder per interval with how many were left out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

#: The logger whose records (and its children's) are limited by the CLI's processes.
KAFKA_LOGGER = "aiokafka"
REPEAT_INTERVAL_S = 30.0
#: Kinds remembered at once; the least recently passed is forgotten first.
MAX_KINDS = 1024


class RepeatLimiter(logging.Filter):
    """Passes the first record of each kind (logger and message template) at ``min_level`` or
    above, then at most one per ``interval_s``, which says how many were suppressed meanwhile."""

    def __init__(self, interval_s: float = REPEAT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic,
                 min_level: int = logging.WARNING) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self.min_level = min_level
        self._passed: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()  # clients may log from other threads

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return True
        kind = (record.name, str(record.msg))
        now = self.clock()
        with self._lock:
            last = self._passed.get(kind)
            if last is not None and now - last[0] < self.interval_s:
                self._passed[kind] = (last[0], last[1] + 1)
                return False
            self._passed[kind] = (now, 0)
            self._passed.move_to_end(kind)
            if len(self._passed) > MAX_KINDS:
                self._passed.popitem(last=False)
        if last is not None and last[1]:
            record.msg = (f"{record.getMessage()} ({last[1]} more like this suppressed "
                          f"in the last {now - last[0]:.0f} s)")
            record.args = None
        return True


def limit_repeated_logs(prefix: str, interval_s: float = REPEAT_INTERVAL_S) -> RepeatLimiter:
    """Attach one :class:`RepeatLimiter` to the logger ``prefix`` and every existing logger
    below it (a logger's filters see only records logged on it, not its children's). Calling
    again reuses the limiter and covers loggers made since."""
    names = [prefix, *(name for name in logging.Logger.manager.loggerDict
                       if name.startswith(prefix + "."))]
    loggers = [logging.getLogger(name) for name in names]
    limiter = next((f for f in loggers[0].filters if isinstance(f, RepeatLimiter)), None)
    if limiter is None:
        limiter = RepeatLimiter(interval_s)
    for logger in loggers:
        if limiter not in logger.filters:
            logger.addFilter(limiter)
    return limiter


def limit_repeated_kafka_logs() -> RepeatLimiter:
    """Limit aiokafka's repeated records, once its module loggers exist (the CLI's processes)."""
    import aiokafka.admin  # noqa: F401 - makes the client's module loggers (admin's too)

    return limit_repeated_logs(KAFKA_LOGGER)
