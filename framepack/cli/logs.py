"""The command line's log: the app's warnings to the terminal as one line each (everything, tracebacks included,
with `--verbose`), and the full log kept in memory and written to `.logs/framepack.log` in the outputs folder only when
something fails, so a run that goes well leaves no file behind."""

from __future__ import annotations

import collections
import logging
import sys
from pathlib import Path
from typing import Any

LOG_NAME = Path(".logs") / "framepack.log"
KEPT_RECORDS = 2000  # what a failure's log shows of the run before it (more is written out as it comes)


def configure(folder: Path | None, verbose: bool) -> None:
    """Log to the terminal and, where there is an outputs `folder`, to its log file on failure."""
    console = _Terminal()
    console.setLevel(logging.DEBUG if verbose else logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s") if verbose else _OneLine())
    if not verbose:  # the libraries' own warnings (retries, deprecations) are for the log file
        console.addFilter(lambda record: record.name.startswith("framepack") or record.levelno >= logging.ERROR)
    handlers: list[logging.Handler] = [console]
    if folder is not None:
        target = _LazyFile(Path(folder) / LOG_NAME)
        target.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(_OnFailure(target))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)


def log_file() -> Path | None:
    """The log file failures are written to, once one was (None before)."""
    for handler in logging.getLogger().handlers:
        target = getattr(handler, "target", None)
        if isinstance(target, _LazyFile) and Path(target.baseFilename).is_file():
            return Path(target.baseFilename)
    return None


class _Terminal(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes (a caller may replace it after logging is set up)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always the current sys.stderr


class _OnFailure(logging.Handler):
    """Keeps the last records in memory; from the first error on, writes them and every later one to `target`."""

    def __init__(self, target: logging.Handler):
        super().__init__(logging.INFO)
        self.target = target
        self._kept: collections.deque[logging.LogRecord] = collections.deque(maxlen=KEPT_RECORDS)
        self._failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if self._failed:
            self.target.handle(record)
            return
        self._kept.append(record)
        if record.levelno >= logging.ERROR:
            self._failed = True
            while self._kept:
                self.target.handle(self._kept.popleft())

    def flush(self) -> None:
        self.target.flush()

    def close(self) -> None:
        self.target.close()
        super().close()


class _LazyFile(logging.FileHandler):
    """A log file made (with its folder) when the first record reaches it."""

    def __init__(self, path: Path):
        super().__init__(path, encoding="utf-8", delay=True)

    def _open(self):  # noqa: ANN202  (logging's own signature)
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


class _OneLine(logging.Formatter):
    """A log record as one line: the message, without the traceback (that goes to the log file)."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return super().format(logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None}))
