"""The FP32 reproduction check: before a model's first check, the FP32 model re-runs the first
:data:`~pytest_qrel.reproduction.REPRODUCE_IMAGES` ID test images once and must give the stored
per-sample outputs (:mod:`pytest_qrel.reproduction`); before a baseline is written, the same small
pass refuses a model whose outputs do not depend on its input or change from pass to pass.

Its own runner (no image store, no outputs cache), so its one small pass per model is counted
apart from the units' passes (:attr:`Reproduction.passes`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from ..baselines import Baseline
from ..errors import BaselineError, NumericsError, QrelError
from ..spec.schema import FP32, Suite
from .loading import Loader, user_stage
from .runner import PassResult, Runner, Want
from .samples import SampleArrays
from .units import BASE, SeedOutputs, UnitComputer, score_functions


class Reproduction:
    """One probe pass per (suite, model) and engine, and the verdict of comparing it with a baseline.

    ``update_command(suite)``: the command quoted in messages to re-create a baseline."""

    def __init__(self, loader: Loader, units: UnitComputer, runner: Runner, *, device: str, update_command: Callable[[Suite], str]) -> None:
        self.loader, self.units, self.runner, self.device = loader, units, runner, device
        self.update_command = update_command
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
        from ..reproduction import device_type

        id_name = suite.id_dataset.name
        stored = b.samples(FP32).get(id_name)
        try:
            ds = self.loader.dataset(suite, id_name)
            same_data = ((b.fingerprint.get("datasets") or {}).get(id_name) or {}).get("fingerprint") == ds.fingerprint
            if stored is None or not same_data or b.id_dataset != id_name or not len(ds):
                return None
            n, differences, tol = self._problem(suite, model, stored, b.device)
        except DataMissingError:
            return None
        except QrelError as exc:
            return exc
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
