"""Log records hold no more than the summary: one redaction for every log handler.

Messages of the libraries medgen calls (its own DICOM reader included) may quote a file path or a
SeriesDescription typed at the scanner. While a :class:`Redactor` is installed with
:func:`redacting_logs`, every record that reaches any handler (console, file, a test's capture)
and every Python warning routed through logging has each registered string replaced.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

#: Shorter strings are not registered: replacing them would garble unrelated text.
MIN_LENGTH = 3


class Redactor(logging.Filter):
    """A logging filter that replaces registered strings in the rendered message."""

    def __init__(self) -> None:
        super().__init__()
        self._replacements: dict[str, str] = {}

    def add(self, text: str, replacement: str) -> None:
        """Replace ``text`` by ``replacement`` in every record from now on."""
        text = str(text)
        if len(text.strip()) >= MIN_LENGTH and text != replacement:
            self._replacements[text] = replacement

    def redact(self, text: str) -> str:
        """``text`` with every registered string replaced (longest first)."""
        for old in sorted(self._replacements, key=len, reverse=True):
            text = text.replace(old, self._replacements[old])
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _all_handlers() -> set[logging.Handler]:
    handlers = set(logging.root.handlers)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        handlers.update(getattr(logger, "handlers", []))
    return handlers


@contextmanager
def redacting_logs(redactor: Redactor) -> Iterator[Redactor]:
    """Install ``redactor`` on every handler (and route warnings through logging) for the block."""
    handlers = _all_handlers()
    for handler in handlers:
        handler.addFilter(redactor)
    logging.captureWarnings(True)
    try:
        yield redactor
    finally:
        logging.captureWarnings(False)
        for handler in handlers:
            handler.removeFilter(redactor)
