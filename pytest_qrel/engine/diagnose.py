"""The suite's opt-in diagnostics (``diagnostics:``, e.g. attention rollout) of one module, on the
few images every unit of a model shares (preprocessed once per model)."""

from __future__ import annotations

from typing import Any

from ..spec.schema import Suite
from .loading import Loader, user_stage


class Diagnose:
    """Runs the diagnostics for one engine; ``images`` are kept per (suite file, model)."""

    def __init__(self, loader: Loader, device: str) -> None:
        self.loader, self.device = loader, device
        self._diag_images: dict[tuple[str, str], tuple[Any, list[dict[str, Any]]]] = {}

    def images(self, suite: Suite, model: str) -> tuple[Any, list[dict[str, Any]]]:
        """The few images every unit's diagnostics look at (the same for all units of a model):
        the first ID test images and the first image of each OOD set, preprocessed."""
        import torch

        from ..diagnostics import DEFAULT_IMAGES
        from ..errors import DataMissingError

        key = (str(suite.path), model)
        if key not in self._diag_images:
            preprocess = self.loader.model(suite, model).preprocess
            picks = [(suite.id_dataset.name, i, "id") for i in range(DEFAULT_IMAGES["id"])]
            for d in suite.ood_datasets:
                picks += [(d, i, "ood") for i in range(DEFAULT_IMAGES["ood_per_set"])]
            images, info = [], []
            for d, i, kind in picks:
                try:
                    ds = self.loader.dataset(suite, d)
                except DataMissingError:
                    continue
                if i < len(ds):
                    with user_stage("preprocessing diagnostic images", f"model '{model}'"):
                        images.append(preprocess(ds[i][0]))
                    info.append({"dataset": d, "index": i, "kind": kind})
            self._diag_images[key] = (torch.stack(images).to(self.device), info)
        return self._diag_images[key]

    def run(self, suite: Suite, model: str, module: Any) -> dict[str, Any]:
        """Every diagnostic the suite asks for, on ``module``; one that cannot handle this model
        records why instead of failing the unit (e.g. attention rollout on a non-ViT)."""
        import torch

        from ..diagnostics import run_diagnostic

        images, info = self.images(suite, model)
        out: dict[str, Any] = {}
        for name in suite.diagnostics:
            try:
                with torch.inference_mode(), user_stage(f"the '{name}' diagnostic", f"model '{model}'"):
                    out[name] = run_diagnostic(name, module, images, image_info=info)
            except ValueError as exc:
                out[name] = {"error": str(exc)}
        # class names for the captions (the ViT paper's Fig. 2 labels each map with its predicted class)
        names = self.loader.model(suite, model).class_names
        if not names and suite.id_dataset.name in self.loader.available(suite, [suite.id_dataset.name]):
            names = getattr(self.loader.dataset(suite, suite.id_dataset.name), "class_names", None)
        for record in out.values():
            if names and "pred" in record:
                record["pred_names"] = [str(names[p]) if 0 <= p < len(names) else f"class {p}" for p in record["pred"]]
        return out
