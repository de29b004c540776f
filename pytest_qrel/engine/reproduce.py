"""The FP32 reproduction check: before a model's first check, the FP32 model re-runs the first
:data:`~pytest_qrel.reproduction.REPRODUCE_IMAGES` ID test images once and must give the stored
per-sample outputs (:mod:`pytest_qrel.reproduction`); before a baseline is written, the same small
pass refuses a model whose outputs do not depend on its input or change from pass to pass.

Its own runner (no image store, no outputs cache), so its one small pass per model is counted
apart from the units' passes (:attr:`Reproduction.passes`).

Once per run, not once per process: the xdist workers of one run share a folder (``shared_dir``,
the run's temp folder, see :mod:`pytest_qrel.plugin.engine_setup`). The first worker to check a
model takes a file lock, runs the probe and writes the comparison's outcome (reproduced, or the
one failure line) to a small JSON file named by a digest of what it compared (suite, model, the
baseline file and its arrays' checksum, the ID set's fingerprint, the device type); the other
workers wait on the lock and read that outcome. A failure is shared as its line, so every check of
the model fails on every worker with the same message; a probe that raised (a crash in the model's
forward, NaN logits) shares nothing, so each worker runs it again and fails on its own. A baseline
written in this run (its ``run_id`` is the run's) was reproduced by the worker that wrote it, before
writing (:meth:`Reproduction.refuse_unreproducible`): nothing to probe.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..baselines import Baseline
from ..errors import BaselineError, NumericsError, QrelError, StorageError
from ..spec.schema import FP32, Suite
from .loading import Loader, user_stage
from .runner import PassResult, Runner, Want
from .samples import SampleArrays
from .units import BASE, SeedOutputs, UnitComputer, score_functions


class Reproduction:
    """One probe pass per (suite, model) and engine, and the verdict of comparing it with a baseline.

    ``update_command(suite)``: the command quoted in messages to re-create a baseline. ``run_id``:
    the run's id (a baseline written with it was reproduced by its writer). ``shared_dir``: a folder
    the processes of this run share (xdist workers), where each model's outcome is written once
    (module docstring); None: this process probes on its own."""

    def __init__(self, loader: Loader, units: UnitComputer, runner: Runner, *, device: str, update_command: Callable[[Suite], str],
                 run_id: str = "", shared_dir: Path | None = None) -> None:
        self.loader, self.units, self.runner, self.device = loader, units, runner, device
        self.update_command = update_command
        self.run_id, self.shared_dir = run_id, shared_dir
        self._probes: dict[tuple[str, str], PassResult] = {}
        self._reproduced: dict[tuple[str, str], QrelError | None] = {}

    @property
    def passes(self) -> Counter[tuple[str, str, str, str]]:
        return self.runner.forward_passes

    def probe(self, suite: Suite, model: str) -> PassResult:
        """FP32 on the first few ID test images, logits kept; once per (suite, model) and engine."""
        from ..reproduction import REPRODUCE_IMAGES, FirstImages
        from .runner import _decodes

        key = (suite.name, model)
        if key not in self._probes:
            id_name = suite.id_dataset.name
            ds = self.loader.dataset(suite, id_name)
            n = min(REPRODUCE_IMAGES, len(ds))
            loaded = self.loader.model(suite, model)
            module = self.units.build_module(suite, model, FP32, None, {})
            clip = loaded.info.get("clip")
            with_clip = clip is not None and hasattr(module, "forward_with_features")
            scores = {s: f for s, f in score_functions(suite).items() if f[1] != "clip" or with_clip}
            what = f"model '{model}' FP32 on the first {n} '{id_name}' test images (reproduction check)"
            try:
                with user_stage("the forward pass", what):
                    self._probes[key] = self.runner.run(
                        module, FirstImages(ds, n, decodes=_decodes(ds)), loaded.preprocess, batch_size=suite.batch_size,
                        want=Want(labelled=True, scores=scores, clip=clip, keep_logits=True), what=what,
                        preprocessing=loaded.preprocessing, key=(suite.name, model, FP32, id_name),
                    )
            except NumericsError as exc:  # NaN / inf logits: say which pass found them
                raise exc.with_context(f"the FP32 reproduction check on the first {n} '{id_name}' test images") from None
        return self._probes[key]

    def _problem(self, suite: Suite, model: str, stored: SampleArrays, stored_device: str) -> tuple[int, list[str], Any]:
        """``(images, differences, tolerance)`` of the probe against ``stored`` (the ID set's arrays)."""
        from ..reproduction import reproduction_differences, tolerance_for

        probe = self.probe(suite, model)
        tol = tolerance_for(stored_device, self.device)
        return len(probe.arrays["pred"]), reproduction_differences(stored, probe.arrays, probe.logits, tol), tol

    def check(self, suite: Suite, model: str, b: Baseline) -> None:
        """Fail (every check of the model, with one and the same line) when the FP32 model no longer
        gives the stored outputs of the first ID images; computed once per model. Skipped where the
        comparison cannot mean anything and the checks say so themselves: the ID set missing here,
        or its fingerprint not the stored one (stale)."""
        key = (suite.name, model)
        if key not in self._reproduced:
            self._reproduced[key] = self._compare(suite, model, b)
        found = self._reproduced[key]
        if found is not None:
            raise found

    def _compare(self, suite: Suite, model: str, b: Baseline) -> QrelError | None:
        from ..errors import DataMissingError

        id_name = suite.id_dataset.name
        if b.run_id and b.run_id == self.run_id:
            return None  # written in this run, after its writer's probe reproduced it
        stored = b.samples(FP32).get(id_name)
        try:
            ds = self.loader.dataset(suite, id_name)
            same_data = ((b.fingerprint.get("datasets") or {}).get(id_name) or {}).get("fingerprint") == ds.fingerprint
            if stored is None or not same_data or b.id_dataset != id_name or not len(ds):
                return None
            if self.shared_dir is None:
                return self._outcome(suite, model, b, stored)
            return self._shared_outcome(suite, model, b, stored, ds.fingerprint)
        except DataMissingError:
            return None
        except QrelError as exc:
            return exc

    def _shared_outcome(self, suite: Suite, model: str, b: Baseline, stored: SampleArrays, data_fingerprint: str) -> QrelError | None:
        """:meth:`_outcome`, computed by the first process of the run and read by the others."""
        from filelock import FileLock

        from .. import fingerprint as fp
        from ..io import atomic_write_text
        from ..reproduction import device_type

        assert self.shared_dir is not None
        what = [suite.name, model, str(b.path.resolve()), b.npz_sha256, b.device, b.id_dataset, data_fingerprint, device_type(self.device)]
        name = fp.digest(["reproduction", *what])[:32]
        path = self.shared_dir / f"reproduction-{name}.json"
        lock = FileLock(str(path.with_suffix(".lock")))
        try:
            self.shared_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except OSError:  # an unusable temp folder costs the sharing, not the check
            return self._outcome(suite, model, b, stored)
        try:
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                record = None
            if isinstance(record, dict) and record.get("run_id") == self.run_id and record.get("compared") == what:
                message = record.get("failure")
                return BaselineError(message) if isinstance(message, str) else None
            found = self._outcome(suite, model, b, stored)  # a probe that raises shares nothing
            try:
                atomic_write_text(path, json.dumps({"run_id": self.run_id, "compared": what, "failure": str(found) if found else None}))
            except StorageError:
                pass  # the other workers probe on their own
            return found
        finally:
            lock.release()

    def _outcome(self, suite: Suite, model: str, b: Baseline, stored: SampleArrays) -> QrelError | None:
        """The probe against the stored ID arrays: None when it reproduces them, else the one line."""
        from ..reproduction import device_type

        id_name = suite.id_dataset.name
        n, differences, tol = self._problem(suite, model, stored, b.device)
        if not differences:
            return None
        return BaselineError(
            f"model '{model}': the FP32 model no longer reproduces its baseline {b.path}: on the first {n} '{id_name}' "
            f"test images {', '.join(differences)} (tolerance: {tol.describe()}; baseline computed on {b.device}, "
            f"this run on {device_type(self.device)}): a nondeterministic forward (unseeded randomness, dropout in "
            "train mode) or a changed model, code or environment (fix: make the forward deterministic; if the change "
            f"is intended, re-create the baseline with: {self.update_command(suite)})"
        )

    def refuse_unreproducible(self, suite: Suite, model: str, seed: SeedOutputs) -> None:
        """Before a baseline is stored: the FP32 outputs must depend on the input, and a second pass
        over the first ID images must give what the full pass gave (else the baseline would record
        one draw of a random model)."""
        from ..validation import refuse_input_independent

        id_name = suite.id_dataset.name
        probe = self.probe(suite, model)
        refuse_input_independent(probe.logits, seed.arrays[BASE], model=model, dataset=id_name)
        n, differences, tol = self._problem(suite, model, seed.arrays[BASE][id_name], self.device)
        if differences:
            raise BaselineError(
                f"refusing to store the FP32 baseline of model '{model}': the FP32 model does not reproduce its own outputs: on the "
                f"first {n} '{id_name}' test images a second pass gives {', '.join(differences)} (tolerance: {tol.describe()}) "
                "(fix: make the forward deterministic: no unseeded randomness, no dropout in train mode)"
            )

    def reproduced(self, suite: Suite, model: str) -> None:
        """The baseline of (suite, model) was just written from this probe: nothing to compare."""
        self._reproduced[(suite.name, model)] = None
