"""The exception tree of pytest-qrel.

Every error a *user* can cause (a bad spec, missing data, a bad checkpoint, a missing or stale
baseline) is a :class:`QrelError`. The pytest plugin prints these as one line, never a traceback;
anything else escaping the library is a bug in pytest-qrel.

::

    QrelError                  base class; ``str(err)`` is the full one-line message
    ├── SpecError              the suite YAML is wrong (file, line, field, fix)
    ├── QuantOptionError       a quantizer's method, bits or options are wrong (option, problem, fix);
    │                          raised by pytest_qrel.quantize, which knows no YAML: callers turn it
    │                          into a located SpecError (pytest_qrel.spec.quantizers.located_error)
    ├── UnknownNameError       a registry lookup failed (lists known names, "did you mean"; the one
    │                          "did you mean" of the package is :func:`did_you_mean`, used by it)
    ├── DataError              a dataset is missing or unreadable
    │   └── DataMissingError   a dataset root does not exist (items are skipped, not failed)
    ├── ModelError             a model or checkpoint cannot be loaded
    ├── SimulationError        verify: true found a tensor with more distinct values than 2^bits
    ├── UserCodeError          user code (a model file, factory, checkpoint loader, forward pass,
    │                          calibration) raised something else, SystemExit included
    ├── NumericsError          outputs cannot be scored: NaN / Inf logits, labels out of range,
    │                          too few OOD samples, all-equal scores, chance-level FP32 accuracy
    │                          (also a ValueError, so the metric functions can raise it)
    ├── DeviceError            the device asked for (--qrel-device cuda) is not available here
    ├── StorageError           a file cannot be written: read-only folder, full disk, name too long
    │                          (raised by the one atomic writer, pytest_qrel.io; also an OSError,
    │                          so code that tolerates a failed write still does)
    └── BaselineError          a stored FP32 baseline cannot be used
        ├── BaselineMissingError
        └── BaselineStaleError (the fingerprint changed; names each field old -> new)

Adding context: a layer that knows more (the engine knows the model and dataset a source error
happened for) calls ``raise exc.with_context("suite.yaml:7: model 'vit'") from None``, which
returns a copy of the *same* error type with the prefix in front of the message and every
attribute kept. Never re-raise with ``type(exc)(message)``: subclasses such as
:class:`UnknownNameError` and :class:`SpecError` take other constructor arguments.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

_E = TypeVar("_E", bound="QrelError")


def _rebuild(cls: type[QrelError], args: tuple[Any, ...], state: dict[str, Any]) -> QrelError:
    """Unpickle any :class:`QrelError` without calling its ``__init__`` (whose signature varies)."""
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


class QrelError(Exception):
    """Base class of every error caused by user input; ``str(err)`` is the one-line message."""

    def with_context(self: _E, prefix: str) -> _E:
        """A copy of this error, of the same type and with the same attributes, whose message is
        ``f"{prefix}: {message}"``. Works for every subclass whatever its constructor takes.

        >>> err = UnknownNameError("embedded dataset", "digts", ["digits", "noise"])
        >>> str(err.with_context("s.yaml:6: dataset 'digits'"))
        "s.yaml:6: dataset 'digits': unknown embedded dataset 'digts'; did you mean 'digits'? (known: digits, noise)"
        """
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.args = (f"{prefix}: {self}" if prefix else str(self),)
        return new

    def __reduce__(self) -> tuple[Any, ...]:  # picklable whatever ``__init__`` takes (xdist, multiprocessing)
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def strip_source(exc: QrelError, source: str) -> QrelError | None:
    """A copy of ``exc`` without its message's own ``dataset '<source>': `` prefix (a dataset source
    names itself when it is loaded on its own), for a caller whose context names ``source`` already;
    None when the message does not start with it."""
    own = f"dataset '{source}': "
    text = str(exc)
    if not text.startswith(own):
        return None
    bare = exc.with_context("")  # a copy of the same type and attributes
    bare.args = (text[len(own):],)
    return bare


class SpecError(QrelError):
    """A suite file is invalid.

    The message names the file (and line when known), the field, what is wrong and how to fix it.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.fix = fix
        where = ""
        if self.file:
            where = self.file + (f":{line}" if line else "")
        parts = [p for p in (where, f"field '{field}'" if field else "") if p]
        head = ": ".join(parts)
        msg = f"{head}: {problem}" if head else problem
        if fix:
            msg += f" (fix: {fix})"
        # One line whatever the user wrote: a name or key with a newline ("vit\n") is shown escaped.
        super().__init__(msg.replace("\r", "\\r").replace("\n", "\\n"))


class QuantOptionError(QrelError):
    """A quantization method was given something it cannot use: an option, a bit width or its
    calibration images.

    ``option`` names what is wrong, as the method sees it: an option key (``"alpha"``), or one of
    ``"method"``, ``"weight_bits"``, ``"act_bits"`` and ``"calibration"`` (the calibration images).
    It carries no file or YAML path: :mod:`pytest_qrel.quantize` takes plain data, and whoever read
    the quantizer from a suite turns the error into a :class:`SpecError` at the right line.
    """

    def __init__(self, option: str, problem: str, fix: str) -> None:
        self.option = option
        self.problem = problem
        self.fix = fix
        super().__init__(f"{option}: {problem} (fix: {fix})")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the known name closest to ``name`` (:func:`difflib.get_close_matches`,
    its default cutoff 0.6), or ``""`` when none is close. The one "did you mean" of pytest-qrel:
    every message that suggests a name gets it from here, mostly through :class:`UnknownNameError`."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


class UnknownNameError(QrelError, LookupError):
    """A name was looked up in a registry (or a table of options, a module's functions, ...) that
    does not know it. The one message shape of an unknown name::

        unknown <kind> '<name>'; did you mean '<closest>'? (known: <a>, <b>, ...)

    without the "did you mean" when nothing is close, ``(known: none)`` when nothing is known, and
    ``listing`` in the parentheses instead of the names when they are too many to print (timm's
    1,200 models: ``(list them with: ...)``)."""

    def __init__(self, kind: str, name: str, known: Iterable[str], *, listing: str | None = None) -> None:
        known = list(known)
        self.kind, self.name, self.known = kind, name, known
        shown = listing if listing is not None else f"known: {', '.join(map(str, known)) or 'none'}"
        super().__init__(f"unknown {kind} '{name}'{did_you_mean(name, known)} ({shown})")


class DataError(QrelError):
    """A dataset cannot be read."""


class DataMissingError(DataError):
    """A dataset's root path does not exist; dependent checks are skipped unless --qrel-strict."""


class ModelError(QrelError):
    """A model, its weights or its checkpoint cannot be loaded."""


class SimulationError(QrelError):
    """A quantized model does not compute on the integer grids it claims (``verify: true``)."""


class UserCodeError(QrelError):
    """User code raised a non-pytest-qrel exception (or exited) at ``stage``; the original is the
    ``__cause__``. The message names the model, the stage and the exception in one line."""

    def __init__(self, message: str, *, stage: str = "") -> None:
        super().__init__(message)
        self.stage = stage


class NumericsError(QrelError, ValueError):
    """Outputs that cannot be scored: NaN / Inf logits, labels outside the model's classes, an OOD
    set below :data:`pytest_qrel.validation.MIN_OOD_SAMPLES`, all-equal OOD scores, or an FP32
    accuracy indistinguishable from chance. The message names the model, quantizer, dataset and
    how many samples are affected (see :mod:`pytest_qrel.validation`)."""


class BaselineError(QrelError):
    """A stored FP32 baseline cannot be used."""


class BaselineMissingError(BaselineError):
    """No FP32 baseline is stored for what a check needs."""


class BaselineStaleError(BaselineError):
    """The stored FP32 baseline was produced from different weights, data or preprocessing."""


class DeviceError(QrelError):
    """The device asked for (``--qrel-device cuda``, ``cuda:K``, ``mps``) is not available on this
    machine; checked once, before any model is loaded (:func:`pytest_qrel.engine.loading.device_problem`)."""


class StorageError(QrelError, OSError):
    """A file cannot be written (or its folder created): a read-only folder or file system, a full
    disk, a file name too long. ``path`` is the file that was being written, ``code`` the errno;
    the message names the path, the reason and the fix. Raised by :mod:`pytest_qrel.io`; callers
    for whom the file is optional (the outputs cache, the decoded-image store) warn once and go on.

    It is also an :class:`OSError` (``errno`` is set), so ``except OSError`` still catches it."""

    def __init__(self, message: str, *, path: str | Path, code: int | None = None, reason: str = "", fix: str | None = None) -> None:
        super().__init__(message)
        self.path = str(path)
        self.code = code
        self.errno = code
        self.reason = reason
        self.fix = fix

    def with_context(self, prefix: str) -> StorageError:
        new = super().with_context(prefix)
        new.errno = self.code  # an OSError slot, not in __dict__
        return new

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_storage, (type(self), self.args, dict(self.__dict__)))


def _rebuild_storage(cls: type[StorageError], args: tuple[Any, ...], state: dict[str, Any]) -> StorageError:
    err = _rebuild(cls, args, state)
    assert isinstance(err, StorageError)
    err.errno = err.code
    return err
