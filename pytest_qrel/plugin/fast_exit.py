"""End a finished qrel run without the interpreter's teardown.

Why: once torch and timm are imported, a normal interpreter exit spends 1 to 1.5 s destroying
modules and objects after the last line was printed (``python -c "import torch, timm"``: 4.5 s,
3.4 s when it ends with ``os._exit``; the demo audit: 1.4 s after its last exit handler). None of
it is the run's work: every output is written, closed and flushed by then.

How: when ``pytest_cmdline_main`` has returned the run's exit status, :func:`arm` registers an exit
handler. Exit handlers run last-registered first and after the interpreter has joined every
non-daemon thread, so this one runs first: it runs every other exit handler itself
(:func:`atexit._run_exitfuncs`: coverage's data file, logging's flush, multiprocessing's joins),
flushes stdout and stderr and ends the process with ``os._exit(status)``: the status pytest
returned. pytest's own last step, flushing stdout, turns a broken pipe into status 1 with stdout
sent to ``/dev/null``; that is seen here (stdout is no longer the file it was) and kept.

Armed only for a run of qrel suites, in a process where pytest is the program (``pytest ...``,
``python -m pytest ...``: a program that calls ``pytest.main()`` decides its own exit), not in a
session nested in another one, nor when the hook raised (the error exits as Python would), and not
with ``QREL_FAST_EXIT=0``. xdist workers exit through execnet and are not armed.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

ENV_SWITCH = "QREL_FAST_EXIT"


def _stdout_identity() -> tuple[int, int] | None:
    try:
        st = os.fstat(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # no real file behind stdout
        return None
    return st.st_dev, st.st_ino


def _flush() -> bool:
    """Flush stdout and stderr; False when stdout's reader has gone (a broken pipe)."""
    ok = True
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            ok = ok and stream is not sys.stdout
        except (OSError, ValueError, AttributeError):
            pass
    return ok


def arm(status: int) -> None:
    """Make the process end with ``status`` right after its exit handlers (see the module doc)."""
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)  # CPython's; elsewhere: a normal exit
    if os.environ.get(ENV_SWITCH, "1") == "0" or run_exit_handlers is None:
        return
    stdout_was = _stdout_identity()

    def end_now() -> None:
        atexit.unregister(end_now)
        run_exit_handlers()  # every other handler, as the interpreter would have run them
        code = int(status)
        if not _flush() or _stdout_identity() != stdout_was:
            code = 1  # pytest's broken-pipe exit: stdout went to /dev/null with status 1
        os._exit(code)

    atexit.register(end_now)


def should_arm(config: Any) -> bool:
    """Whether :func:`arm` applies to this session: a run of qrel suites, pytest the program, not
    nested in another session, not an xdist worker."""
    from .state import NESTED, STATE, is_worker
    from .supervisor import pytest_is_the_program

    state = config.stash.get(STATE, None)
    return (state is not None and bool(state.suites) and not config.stash.get(NESTED, False)
            and not is_worker(config) and pytest_is_the_program())
