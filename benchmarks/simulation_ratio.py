"""Simulation overhead: the fake-quantized forward against the FP32 forward of the same model, on
DeiT-S (``deit_small_patch16_224``, random init: the cost does not depend on the weights), eager,
batch 16, 2 torch threads. A measurement, not a test: every ratio is measured within one run, the
timings of the configurations interleaved (round-robin, median of ``--reps``) so that a load
change on the machine hits all of them alike.

    python benchmarks/simulation_ratio.py [--model deit_small_patch16_224] [--batch 16] [--threads 2]
        [--reps 5] [--configs minmax:8:8,minmax:4:4,repq_vit:8:8,repq_vit:4:4] [--compile]

``--compile`` also times what ``--qrel-compile`` runs (each activation quantizer compiled,
bit-identical to eager: checked here on the batch) and, as a bound, ``torch.compile`` of the
whole module (not bit-identical: LayerNorm / softmax fuse differently). The compiles themselves are
not timed; they need a C++ compiler and take minutes on a small CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--calibration", type=int, default=32, help="calibration images (random, normalised)")
    parser.add_argument("--configs", default="minmax:8:8,minmax:4:4,repq_vit:8:8,repq_vit:4:4")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    import timm
    import torch

    from pytest_qrel.quantize import quantize, validate_quantizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fp32 = timm.create_model(args.model, pretrained=False).eval()
    g = torch.Generator().manual_seed(0)
    calib = torch.randn(args.calibration, 3, 224, 224, generator=g)
    x = torch.randn(args.batch, 3, 224, 224, generator=g)
    modules: dict[str, torch.nn.Module] = {"FP32": fp32}
    for spec in args.configs.split(","):
        method, w, a = spec.split(":")
        config = validate_quantizer(method, int(w), int(a), {}, seed=0)
        t = time.perf_counter()
        modules[f"{method} W{w}A{a}"] = quantize(fp32, config, calib).eval()
        print(f"  quantized {method} W{w}A{a} in {time.perf_counter() - t:.1f} s", flush=True)
    if args.compile:
        import copy

        from pytest_qrel.engine.runner import compile_quantizers

        for name in list(modules):
            if name != "FP32":  # what --qrel-compile does: the activation quantizers only, bit-identical
                qc = copy.deepcopy(modules[name])
                n = compile_quantizers(qc)
                t = time.perf_counter()
                with torch.inference_mode():
                    same = torch.equal(qc(x), modules[name](x))
                print(f"  --qrel-compile {name}: {n} quantizers compiled in {time.perf_counter() - t:.1f} s, "
                      f"outputs {'bit-identical' if same else 'DIFFER'}", flush=True)
                modules[f"{name} --qrel-compile"] = qc
            compiled = torch.compile(modules[name])  # the whole model: not bit-identical, a bound
            t = time.perf_counter()
            with torch.inference_mode():
                compiled(x)
            print(f"  compiled {name} in {time.perf_counter() - t:.1f} s", flush=True)
            modules[f"{name} (whole, compiled)"] = compiled

    times: dict[str, list[float]] = {name: [] for name in modules}
    with torch.inference_mode():
        for m in modules.values():  # warm-up
            m(x)
        for _ in range(args.reps):
            for name, m in modules.items():
                t = time.perf_counter()
                m(x)
                times[name].append(time.perf_counter() - t)
    ref = statistics.median(times["FP32"])
    print(f"\n{args.model}, batch {args.batch}, {torch.get_num_threads()} threads, eager"
          f"{' and compiled' if args.compile else ''}, median of {args.reps}")
    print(f"  {'configuration':28s} {'s / batch':>10s} {'ms / image':>11s} {'/ FP32 eager':>13s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:28s} {med:10.3f} {1e3 * med / args.batch:11.1f} {med / ref:13.3f}")


if __name__ == "__main__":
    main()
