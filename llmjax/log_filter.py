"""Console logging: llmjax's own INFO lines; libraries (orbax logs every save) only WARNING+."""

from __future__ import annotations

import logging as std_logging
import os

from absl import logging


class _OwnInfoOnly(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        if f"{os.sep}llmjax{os.sep}" in record.pathname:
            return True
        return record.levelno >= std_logging.WARNING and \
            "Using custom data configuration" not in record.getMessage()


def quiet_library_logs() -> None:
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_OwnInfoOnly())
