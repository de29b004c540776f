"""The audit of a runtime unit, run by the engine right after the runtime's module is built.

:func:`audit_runtime` takes the module a runtime method returned (it carries ``qrel_runtime``:
identity, census, artifact size) and returns the plain dict the unit records and caches
(``info["runtime"]``)::

    {"identity": {...}, "census": {...},
     "parity": {"W8A8": {"logit_diff", "agreement", "floor", "parity", ...}},
     "latency": {"batch", "fp32": {...}, "runtime": {...}, "ratio": {...}},   # {} with latency: false
     "size": {"artifact_bytes", "fp32_bytes", "ratio"}}

It raises :class:`~pytest_qrel.errors.SimulationError` when the census contradicts the
quantizer's declared bits (every check of the unit then fails with the census in its message),
and when the artifact's files changed between the cache key and the build.
The simulations parity compares with are the quantizer's ``simulation:`` option and every
quantizer a ``parity`` / ``logit_diff`` / ``agreement`` check of it names (:func:`parity_refs`).
"""

from __future__ import annotations

from typing import Any

from ..errors import SimulationError, SpecError
from .census import bits_problem, summary
from .module import runtime_info

PARITY_METRICS = ("parity", "logit_diff", "agreement")


def parity_refs(suite: Any, base: str) -> list[str]:
    """The simulated quantizers ``base``'s parity is measured against (option, then checks)."""
    refs = []
    wanted = suite.quantizers[base].options.get("simulation")
    if wanted:
        refs.append(str(wanted))
    for check in suite.checks:
        if check.metric in PARITY_METRICS and base in check.quantizers and check.score and check.score not in refs:
            refs.append(check.score)
    return refs


def census_failure(spec: Any, census: dict[str, Any]) -> SimulationError | None:
    """The error of a unit whose census contradicts its declared bits (``None``: it does not)."""
    found = bits_problem(census, spec.weight_bits, spec.act_bits)
    if found is None:
        return None
    problem, fix = found
    return SimulationError(f"{spec.where or spec.name}: quantizer '{spec.name}' (method {spec.method}) is not what it declares: "
                           f"{problem}; census: {summary(census)} (fix: {fix})")


def _check_unchanged(spec: Any, identity: dict[str, Any], key_identity: dict[str, Any] | None) -> None:
    read, keyed = identity.get("files"), (key_identity or {}).get("files")
    if read is not None and keyed is not None and read != keyed:
        raise SimulationError(f"{spec.where or spec.name}: quantizer '{spec.name}': the artifact changed while the gate read it "
                              f"({', '.join(read)}); run again")


def _simulation(computer: Any, suite: Any, model: str, base: str, ref: str) -> Any:
    from ..quantize import QUANTIZERS, quantize, validate_quantizer
    from ..quantize.runtime_options import RuntimeOptions

    spec = suite.quantizers[base]
    where = {"file": spec.where.file if spec.where else suite.path, "line": spec.where.line if spec.where else None}
    if ref not in suite.quantizers:
        raise SpecError(f"simulation '{ref}' is not a quantizer of the suite", field=f"quantizers.{base}.options.simulation",
                        fix=f"name one of {', '.join(q for q in suite.quantizers if q != base)}", **where)
    sim = computer.quantizer_spec(suite, ref, suite.quantizers[ref].calibration.seed)
    if isinstance(QUANTIZERS.meta(sim.method).get("options_type"), type) and issubclass(QUANTIZERS.meta(sim.method)["options_type"], RuntimeOptions):
        raise SpecError(f"'{ref}' runs a runtime ({sim.method}), not a simulation", field=f"quantizers.{base}.options.simulation",
                        fix="name a simulated quantizer of the same recipe (e.g. method: minmax)", **where)
    config = validate_quantizer(sim.method, sim.weight_bits, sim.act_bits, sim.options, seed=sim.calibration.seed)
    images, labels = computer.loader.calibration_images(suite, model, sim.calibration.samples, sim.calibration.seed,
                                                        f"quantizers.{ref}.calibration.samples")
    loaded = computer.loader.model(suite, model)
    return quantize(loaded.module.to(computer.device), config, images, labels=labels).eval()


def _test_images(computer: Any, suite: Any, model: str, n: int) -> Any:
    import torch

    ds = computer.loader.dataset(suite, suite.id_dataset.name)
    preprocess = computer.loader.model(suite, model).preprocess
    return torch.stack([preprocess(ds[i][0]) for i in range(min(n, len(ds)))]).to(computer.device)


def audit_runtime(computer: Any, suite: Any, model: str, base: str, spec: Any, module: Any,
                  key_identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The runtime record of ``module`` (module docstring). ``computer`` is the engine's
    :class:`~pytest_qrel.engine.units.UnitComputer` (loader, device, quantizer specs)."""
    import torch

    from . import latency, parity

    info = runtime_info(module)
    assert info is not None
    _check_unchanged(spec, info["identity"], key_identity)
    failure = census_failure(spec, info["census"])
    if failure is not None:
        raise failure
    options = spec.options
    fp32 = computer.loader.model(suite, model).module.to(computer.device).eval()
    images = _test_images(computer, suite, model, int(options.get("parity_images", 64)))
    record: dict[str, Any] = {"identity": info["identity"], "census": info["census"], "parity": {}, "latency": {}}
    refs = parity_refs(suite, base)
    if refs:
        runtime_logits, fp32_logits = parity.logits(module, images), parity.logits(fp32, images)
        for ref in refs:
            sim = _simulation(computer, suite, model, base, ref)
            record["parity"][ref] = parity.compare(runtime_logits, parity.logits(sim, images),
                                                   parity.logits(sim, parity.noisy(images)), fp32_logits)
            del sim
    if options.get("latency", True):
        batch = images[: suite.batch_size]
        if len(batch) < suite.batch_size:  # tile the test images up to the suite's batch size
            batch = images.repeat((suite.batch_size + len(images) - 1) // len(images), 1, 1, 1)[: suite.batch_size]

        def call(m: Any) -> Any:
            def run(x: Any) -> Any:
                with torch.inference_mode():
                    return m(x)
            return run

        record["latency"] = latency.measure(call(fp32), call(module), images[:1], batch)
    fp32_bytes = latency.fp32_bytes(fp32)
    size = int(info.get("artifact_bytes") or 0)
    record["size"] = {"artifact_bytes": size, "fp32_bytes": fp32_bytes, "ratio": size / fp32_bytes if fp32_bytes else None}
    return record


def runtime_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The numbers checks read from a runtime record: ``{"parity": {ref: floors}, "logit_diff":
    {ref: ..}, "agreement": {ref: ..}, "latency", "latency_b1", "memory", "size", "int8_share"}``
    (a measure that was not taken is absent)."""
    out: dict[str, Any] = {m: {ref: p[m] for ref, p in record.get("parity", {}).items()} for m in PARITY_METRICS}
    ratio = (record.get("latency") or {}).get("ratio") or {}
    for key in ("latency", "latency_b1", "memory"):
        if ratio.get(key) is not None:
            out[key] = ratio[key]
    if (record.get("size") or {}).get("ratio") is not None:
        out["size"] = record["size"]["ratio"]
    out["int8_share"] = record.get("census", {}).get("int8_share", 0.0)
    return out
