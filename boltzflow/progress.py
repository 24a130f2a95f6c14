"""Progress of long work: a tqdm bar on a terminal, periodic log lines everywhere else.

Training and MCMC loops report progress through [`progress_bar`][boltzflow.progress.progress_bar].
On a terminal it is an ordinary tqdm bar. Without one (a script whose output is redirected, a batch
job, CI) a bar would print nothing, so the same bar writes one line through the `boltzflow.progress`
logger at most every `BOLTZFLOW_PROGRESS_INTERVAL` seconds (default 30) and one when it
closes, e.g.

    INFO boltzflow.progress: training: 1200/3000 (40%), loss=-52.1, ess=0.31 [03:10<04:45]

(steps done, loss and ESS where known, elapsed and remaining time). The `boltzflow` command
shows these lines; in your own scripts, enable them with
`logging.getLogger("boltzflow.progress").setLevel(logging.INFO)` and a handler (for example
`logging.basicConfig()`).
"""

from __future__ import annotations

import logging
import os
import sys

from tqdm.auto import tqdm

__all__ = ["logger", "progress_bar", "log_interval"]

logger = logging.getLogger("boltzflow.progress")
"""The logger that carries progress lines and run stages."""

_LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%){postfix} [{elapsed}<{remaining}]"
_LOG_FORMAT_NO_ETA = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%){postfix} [{elapsed}]"
_BAR_FORMAT_NO_ETA = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def log_interval() -> float:
    """Seconds between progress lines off a terminal (`$BOLTZFLOW_PROGRESS_INTERVAL`, 30)."""
    try:
        return max(0.0, float(os.environ.get("BOLTZFLOW_PROGRESS_INTERVAL", 30.0)))
    except ValueError:
        return 30.0


class _LogLines:
    """A file-like sink turning tqdm's redraws into log records (one per non-empty line)."""

    def write(self, text: str) -> None:
        line = text.strip("\r\n\x1b[A ").strip()
        if line:
            logger.info("%s", line)

    def flush(self) -> None:
        pass


def _on_terminal() -> bool:
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def progress_bar(
    total: int,
    desc: str,
    *,
    enabled: bool | None = None,
    leave: bool = True,
    initial: int = 0,
    eta: bool = True,
) -> tqdm:
    """A progress bar for `total` steps named `desc`.

    Args:
        total: number of steps.
        desc: what is progressing (`"training"`, a kernel name).
        enabled: `False` shows nothing; `True` or `None` show a bar on a terminal and
            periodic log lines otherwise.
        leave: keep the final state (a bar) or log a final line (off a terminal).
        initial: steps already done (a resumed run).
        eta: show the estimated time left; `False` where progress is not uniform in time (an
            SMC temperature, whose last stretch takes most of the time).

    Returns:
        a `tqdm.tqdm`; use `update`, `set_postfix` and `close` (or `with`).
    """
    if enabled is False:
        return tqdm(total=total, initial=initial, disable=True)
    common = {"total": total, "initial": initial, "desc": desc, "leave": leave}
    if _on_terminal():
        fmt = None if eta else _BAR_FORMAT_NO_ETA
        return tqdm(**common, dynamic_ncols=True, bar_format=fmt)
    fmt = _LOG_FORMAT if eta else _LOG_FORMAT_NO_ETA
    return tqdm(**common, file=_LogLines(), mininterval=log_interval(), miniters=1, bar_format=fmt)
