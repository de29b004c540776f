"""Progress reports reach the listener: image passes, calibration, QAT steps, finished units."""

from __future__ import annotations

from pytest_qrel import Engine, load_suite, run
from pytest_qrel.progress import reporting, step

SUITE = """\
version: 1
name: prog
models:
  vit: {source: "embedded:digits_vit"}
datasets:
  id: {name: digits, source: "embedded:digits"}
quantizers:
  W8A8-qat: {method: qat_lsq, weight_bits: 8, act_bits: 8, calibration: {samples: 16}, options: {steps: 3, batch_size: 8}}
checks: ["W8A8-qat top1 >= 0"]
"""


class Listener:
    def __init__(self) -> None:
        self.updates: list[tuple[str, int, int, str]] = []
        self.units: list[tuple[str, int, int]] = []

    def update(self, what: str, done: int, total: int, unit: str = "images") -> None:
        self.updates.append((what, done, total, unit))

    def unit(self, what: str, seconds: float, passes: int, images: int) -> None:
        self.units.append((what, passes, images))


def test_the_engine_reports_passes_calibration_and_qat_steps(tmp_path):
    (tmp_path / "s.yaml").write_text(SUITE)
    listener = Listener()
    engine = Engine(baseline_dir=tmp_path / "b", update_baselines=True, progress=listener)
    (verdict,) = run(load_suite(tmp_path / "s.yaml"), engine=engine)
    assert verdict.outcome == "passed", verdict.message
    qat = [u for u in listener.updates if u[0] == "vit W8A8-qat: QAT"]
    assert qat == [("vit W8A8-qat: QAT", k, 3, "steps") for k in (1, 2, 3)]
    assert ("vit W8A8-qat: calibrating", 1, 1, "steps") in listener.updates
    passes = [u for u in listener.updates if u[0] == "model 'vit' W8A8-qat on digits"]
    assert passes[0][1] == 0 and passes[-1][1] == passes[-1][2] == 385 and all(u[3] == "images" for u in passes)
    assert ("vit W8A8-qat", 1, 385) in listener.units


def test_steps_without_a_listener_are_ignored():
    step("QAT", 1, 2)  # nothing listens: a no-op
    seen = []
    with reporting(lambda *a: seen.append(a), "x"):
        step("phase", 1, 2)
    step("after", 1, 2)
    assert seen == [("x: phase", 1, 2, "steps")]
