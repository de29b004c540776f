"""How far one check travels through the engine: the walk a maintainer makes who follows one check
from the engine's evaluation entry (``Engine.evaluate(p)``) through the code (issue 19: "stops in
at most 20 places and climbs back up at most 3 times").

    python benchmarks/check_path.py [--suite suites/demo.yaml] [--check NAME] [--baselines DIR] [--show] [--full]

What is traced: one planned check of the suite (by default the first OOD check of a quantizer, so
the walk goes through a unit, the baseline, an interval and the decision) on a *warm* outputs
cache: a first engine evaluates the whole suite once with a temporary cache directory (this fills
the cache and imports every module), then a fresh engine with the same cache is told the whole
plan (``expect``), evaluates one other check of the same unit, on the same datasets where the plan
has one (the unit's arrays, the baseline verified for those datasets and the FP32 reproduction
probe are then in the engine, as for every check but the first of a unit and datasets), and
the chosen check is evaluated under :func:`sys.setprofile`: the path of *one check*. With
``--first`` the chosen check is the fresh engine's first: the walk then also reads the baseline,
probes the FP32 model, loads the unit's arrays from the cache and builds its records.

How it counts. The walk follows the code of ``pytest_qrel/engine/`` (``--full``: of every file of
the package); only Python functions defined in ``pytest_qrel/`` count: calls into numpy, torch or
the standard library are walked through but not counted, and comprehensions, generator expressions
and lambdas count as part of the function that holds them.

- **stops**: distinct ``(file, function)`` pairs the walk enters: every function of a followed
  file, and every function of another package file that a followed function calls (read as a black
  box: its signature and docstring, not its body: the statistics, the metric formulas, the data
  sources are leaves of the walk, each one stop);
- **files**: distinct files among the stops;
- **climbs back up**: the reader finishes a followed function of file B and has to go back up to its
  caller in another followed file A to find what happens next: distinct ``(B function, A
  function)`` pairs where a followed frame of B returns into a followed frame of A (A != B) and that
  frame of A then calls on (a counted call before it returns). Returning into the entry function
  (``Engine.evaluate``, the table of contents the reader keeps open) is not a climb, nor is a return
  after which the caller only returns;
- **callbacks**: distinct ``(caller file, callee file)`` pairs where a call enters a followed file
  that is already on the stack below the caller (a lower layer calling back into a higher one);
- **returns to a file already left**: calls that move the walk into a followed file it had been in
  before and left (by a call elsewhere or a return): how often the reader goes back to a file.

Measured on the code before and after the engine split of issue 19 with this same script (the
numbers are in the branch's report).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PACKAGE = str(ROOT / "pytest_qrel") + "/"


class PathTrace:
    """A :func:`sys.setprofile` hook counting the walk (see the module docstring).

    ``inside``: the folder (relative to ``pytest_qrel/``) whose code the walk follows; ``""``
    follows every file of the package."""

    def __init__(self, inside: str = "engine/") -> None:
        self.inside = inside
        # per Python frame: (package file or None, followed, function name, climbed-to from (file, function) or None)
        self.stack: list[list[Any]] = []
        self.stops: dict[tuple[str, str], int] = {}  # (file, function) -> order first entered
        self.callbacks: set[tuple[str, str]] = set()
        self.climbs: set[tuple[tuple[str, str], tuple[str, str]]] = set()
        self.returns_to_left = 0
        self.entered: set[str] = set()
        self.current: str | None = None  # the followed file control is in

    @staticmethod
    def _where(frame: Any) -> tuple[str | None, str]:
        code = frame.f_code
        name = getattr(code, "co_qualname", code.co_name)
        if not code.co_filename.startswith(PACKAGE):
            return None, name
        return code.co_filename[len(PACKAGE):], name

    def _followed_frame(self) -> list[Any] | None:
        return next((f for f in reversed(self.stack) if f[0] is not None and f[1]), None)

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            self._call(frame)
        elif event == "return" and self.stack:
            self._return()

    def _return(self) -> None:
        popped = self.stack.pop()
        caller = self._followed_frame()
        self.current = caller[0] if caller is not None else None
        inner = "<" in popped[2] and not popped[2].endswith("<module>")
        if popped[1] and not inner and caller is not None and caller is not self.stack[0] and caller[0] != popped[0]:
            caller[3] = (popped[0], popped[2])  # a climb, if this frame calls on

    def _call(self, frame: Any) -> None:
        file, name = self._where(frame)
        if not self.stack:  # the entry itself
            self.stops[(file or "?", name)] = 0
            self.stack.append([file, True, name, None])
            self.entered.add(file or "?")
            self.current = file
            return
        parent = self.stack[-1]
        inner = "<" in name and not name.endswith("<module>")
        if inner or file is None:
            self.stack.append([parent[0], parent[1], name, None] if inner else [None, False, name, None])
            return
        in_scope = file.startswith(self.inside)
        if parent[1] and parent[0] is not None:
            followed, counted = (True if parent[0] == file else in_scope), True
        else:  # below a black box or a library: only a call back into the followed code counts
            followed = counted = in_scope
        if counted:
            self._count(file, name, followed)
        self.stack.append([file, followed, name, None])

    def _count(self, file: str, name: str, followed: bool) -> None:
        self.stops.setdefault((file, name), len(self.stops))
        caller_frame = self._followed_frame()
        if caller_frame is not None and caller_frame[3] is not None:
            self.climbs.add((caller_frame[3], (caller_frame[0], caller_frame[2])))
            caller_frame[3] = None
        caller = next((f[0] for f in reversed(self.stack) if f[0] is not None), None)
        if followed and caller is not None and caller != file and any(f[0] == file and f[1] for f in self.stack):
            self.callbacks.add((caller, file))
        if followed and file != self.current and file in self.entered:
            self.returns_to_left += 1
        if followed:
            self.entered.add(file)
            self.current = file

    def summary(self) -> dict[str, int]:
        return {
            "stops": len(self.stops),
            "files": len({f for f, _ in self.stops}),
            "climbs back up": len(self.climbs),
            "callbacks": len(self.callbacks),
            "returns to a file already left": self.returns_to_left,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--suite", default=str(ROOT / "suites" / "demo.yaml"))
    parser.add_argument("--check", default=None, help="the planned check as '<model> <quantizer> <name>' (default: see the docstring)")
    parser.add_argument("--baselines", default=str(ROOT / "baselines"))
    parser.add_argument("--show", action="store_true", help="print every stop and climb")
    parser.add_argument("--first", action="store_true", help="trace the first check of a fresh engine (see the docstring)")
    parser.add_argument("--full", action="store_true", help="follow every file of the package, not only engine/")
    args = parser.parse_args()

    from pytest_qrel import load_suite, plan
    from pytest_qrel.engine import Engine
    from pytest_qrel.errors import QrelError
    from pytest_qrel.metrics import METRICS

    suite = load_suite(args.suite)
    planned = plan(suite)
    if args.check:
        chosen = next(p for p in planned if f"{p.model} {p.quantizer} {p.name}" == args.check)
    else:
        chosen = next(p for p in planned if p.quantizer != "FP32" and METRICS.meta(p.check.metric)["kind"] == "ood")
    siblings = [p for p in planned if p.units == chosen.units and p.model == chosen.model and p is not chosen]
    sibling = next((p for p in siblings if p.datasets == chosen.datasets), siblings[0])
    with tempfile.TemporaryDirectory() as cache:
        warm = Engine(baseline_dir=args.baselines, cache_dir=cache)
        warm.expect(planned)
        for p in planned:
            try:
                warm.evaluate(p)
            except QrelError:  # a check's own failure (missing data, stale baseline) does not matter here
                pass
        engine = Engine(baseline_dir=args.baselines, cache_dir=cache)
        engine.expect(planned)
        if not args.first:
            engine.evaluate(sibling)
        trace = PathTrace("" if args.full else "engine/")
        sys.setprofile(trace)
        try:
            verdict = engine.evaluate(chosen)
        finally:
            sys.setprofile(None)
    print(f"check: {chosen.model} {chosen.quantizer} {chosen.name} -> {verdict.outcome}")
    print(f"followed: pytest_qrel/{trace.inside or '*'}; " + ("the first check of a fresh engine" if args.first else f"after: {sibling.quantizer} {sibling.name}"))
    if args.show:
        for (file, name), _ in sorted(trace.stops.items(), key=lambda kv: kv[1]):
            print(f"  {file}: {name}")
        for (file, name), (to_file, to_name) in sorted(trace.climbs):
            print(f"  climb: {file}:{name} -> {to_file}:{to_name}")
        for caller, callee in sorted(trace.callbacks):
            print(f"  callback: {caller} -> {callee}")
    for key, value in trace.summary().items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
