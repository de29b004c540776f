"""Deployed runtimes against FP32 and against the simulation: each runtime's latency ratio to FP32 at
batch 1 and 64, its parity to the minmax W8A8 simulation and that simulation's noise floor, on the
shipped digits ViT and a random-init DeiT-S (``deit_small_patch16_224``, ``pretrained=False``: the
cost does not depend on the weights), all measured in one process, 2 torch threads by default.

A measurement, not a test. For each model: the FP32 module, the minmax W8A8 simulation and each
runtime are built with the project's own methods (``quantize(model, validate_quantizer(...))``, the
code a suite runs); latencies are medians over ``--reps`` calls with every module taking its turn
call by call (:func:`pytest_qrel.runtimes.latency.median_ms`), so a load change on the machine hits
all of them alike; parity is :func:`pytest_qrel.runtimes.parity.compare` on the same images.

    python benchmarks/runtime_ratio.py [--models digits,deit_s] [--threads 2] [--reps 5]
        [--runtimes ort_static,ort_dynamic,ort_all,openvino,torchao,torchao_compiled] [--json out.json]

Digits: calibration on 256 train images, parity on the first 64 test images. DeiT-S: 32 random
normal calibration images and 64 random evaluation images (a random-init DeiT is chaotic under
quantization: judge parity against the floor, never bit for bit).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RUNTIMES: dict[str, tuple[str, dict[str, Any]]] = {
    "ort_static": ("onnxruntime", {"mode": "static", "ops": "linear"}),
    "ort_dynamic": ("onnxruntime", {"mode": "dynamic"}),
    "ort_all": ("onnxruntime", {"mode": "static", "ops": "all"}),
    "openvino": ("openvino", {"inference_precision": "f32"}),
    "torchao": ("torchao", {"config": "int8_dynamic"}),
    "torchao_compiled": ("torchao", {"config": "int8_dynamic", "compile": True}),
}


def data(name: str) -> tuple[Any, Any, Any]:
    """``(fp32 module, calibration images, evaluation images)`` of a model."""
    import numpy as np
    import torch

    if name == "digits":
        from pytest_qrel.data import load_dataset
        from pytest_qrel.models import load_model

        loaded = load_model("embedded:digits_vit")
        train, test = load_dataset("embedded:digits", split="train"), load_dataset("embedded:digits", split="test")
        index = np.random.default_rng(0).permutation(len(train))[:256]
        calibration = torch.stack([loaded.preprocess(train[int(i)][0]) for i in index])
        images = torch.stack([loaded.preprocess(test[i][0]) for i in range(64)])
        return loaded.module.eval(), calibration, images
    import timm

    torch.manual_seed(0)
    model = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    g = torch.Generator().manual_seed(0)
    return model, torch.randn(32, 3, 224, 224, generator=g), torch.randn(64, 3, 224, 224, generator=g)


def run_model(name: str, runtimes: list[str], reps: int) -> list[dict[str, Any]]:
    import torch

    from pytest_qrel.quantize import quantize, validate_quantizer
    from pytest_qrel.runtimes import latency, parity
    from pytest_qrel.runtimes.census import summary
    from pytest_qrel.runtimes.module import runtime_info

    fp32, calibration, images = data(name)
    sim = quantize(fp32, validate_quantizer("minmax", 8, 8, {}, seed=0), calibration).eval()
    modules: dict[str, Any] = {"FP32": fp32, "minmax W8A8 (simulation)": sim}
    built: dict[str, float] = {}
    for key in runtimes:
        method, options = RUNTIMES[key]
        t = time.perf_counter()
        modules[key] = quantize(fp32, validate_quantizer(method, 8, 8, options, seed=0), calibration).eval()
        built[key] = time.perf_counter() - t
        print(f"  {name}: built {key} in {built[key]:.1f} s; {summary(runtime_info(modules[key])['census'])[:160]}", flush=True)

    def call(m: Any) -> Any:
        def run(x: Any) -> Any:
            with torch.inference_mode():
                return m(x)
        return run

    fns = {k: call(m) for k, m in modules.items()}
    b1 = latency.median_ms(fns, images[:1], warmup=3, repeats=max(reps * 3, 9))
    b64 = latency.median_ms(fns, images[:64], warmup=1, repeats=reps)
    fp32_logits, sim_logits = parity.logits(fp32, images), parity.logits(sim, images)
    sim_noisy = parity.logits(sim, parity.noisy(images))
    rows = []
    for key, m in modules.items():
        p = parity.compare(parity.logits(m, images), sim_logits, sim_noisy, fp32_logits)
        info = runtime_info(m)
        rows.append({
            "model": name, "unit": key, "b1_ms": b1[key], "b64_ms": b64[key], "ratio_b1": b1[key] / b1["FP32"],
            "ratio_b64": b64[key] / b64["FP32"], "logit_diff": p["logit_diff"], "floor": p["floor"], "parity_floors": p["parity"],
            "agreement": p["agreement"], "vs_fp32": p["runtime_error"],
            "int8_share": info["census"]["int8_share"] if info else None, "build_s": built.get(key),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits,deit_s")
    parser.add_argument("--runtimes", default="ort_static,ort_dynamic,ort_all,openvino,torchao")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        rows += run_model(name, args.runtimes.split(","), args.reps)
    print(f"\n{args.threads} threads, torch {torch.__version__}; latency ratios to FP32 (median, interleaved); parity to minmax W8A8")
    print("| model | unit | batch 1 (ms) | x FP32 | batch 64 (ms) | x FP32 | mean |Δ logit| to sim | sim floor | floors | top-1 agreement | int8 share |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        share = "" if r["int8_share"] is None else f"{100 * r['int8_share']:.1f}%"
        print(f"| {r['model']} | {r['unit']} | {r['b1_ms']:.3g} | {r['ratio_b1']:.2f} | {r['b64_ms']:.4g} | {r['ratio_b64']:.2f} | "
              f"{r['logit_diff']:.3g} | {r['floor']:.3g} | {r['parity_floors']:.3g} | {r['agreement']:.3f} | {share} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
