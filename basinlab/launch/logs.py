"""One logging setup for the ``basinlab`` command and the worker processes it spawns."""

from __future__ import annotations

import logging


def configure_logging(main_process: bool = True) -> None:
    """Timestamped INFO lines from the main process (WARNING elsewhere); chatty libraries quietened."""
    logging.basicConfig(
        level=logging.INFO if main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("accelerate", "torch.distributed", "matplotlib", "datasets", "evaluate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
