"""One logging setup for the ``basinlab`` command and the worker processes it spawns."""

from __future__ import annotations

import logging


def configure_logging(main_process: bool = True, level: int | None = None) -> None:
    """Timestamped lines, INFO from the main process and WARNING elsewhere unless ``level`` is
    given; chatty libraries quietened."""
    logging.basicConfig(
        level=level if level is not None else logging.INFO if main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("accelerate", "torch.distributed", "matplotlib", "datasets", "evaluate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
