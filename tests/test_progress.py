"""Progress reports reach the listener: image passes, calibration, QAT steps, finished units."""

from __future__ import annotations

from pathlib import Path

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
    assert qat == [("vit W8A8-qat: QAT", k, 3, "steps") for k in (0, 1, 2, 3)]  # 0: the phase's start
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


# ---------------------------------------------------------------------------- the plugin's progress text
class Screen:
    """One terminal line, as the plugin's progress text sees it through pytest's public API: the
    terminal reporter's ``write_raw`` / ``write_line`` / ``isatty`` and the terminal writer's
    ``fullwidth`` / ``width_of_current_line``. Backspaces move the cursor left; pytest counts
    only its own writes (``pytest_write``) in the line's width, as its terminal writer does."""

    isatty = True

    def __init__(self, width: int = 80) -> None:
        self.fullwidth, self.cells, self.cursor, self.counted = width, [], 0, ""
        self.lines: list[str] = []

    @property
    def width_of_current_line(self) -> int:
        return len(self.counted)

    def pytest_write(self, text: str) -> None:
        self.counted += text
        self.write_raw(text)

    def write_raw(self, text: str, *, flush: bool = False) -> None:
        for ch in text:
            if ch == "\b":
                self.cursor = max(0, self.cursor - 1)
                continue
            if self.cursor < len(self.cells):
                self.cells[self.cursor] = ch
            else:
                self.cells.append(ch)
            self.cursor += 1
            assert len(self.cells) < self.fullwidth, "the line wrapped: backspaces cannot come back"

    def write_line(self, line: str, **markup: bool) -> None:
        self.lines.append(self.visible)
        self.cells, self.cursor, self.counted = [], 0, ""
        self.lines.append(line)
        self.currentfspath = None  # pytest's ensure_newline: the next letter starts a line of its own

    currentfspath: Path | str | None = None  # pytest's: the file whose letters this line holds (a str under -v)
    startpath = Path("/project")

    def write(self, text: str, **markup: bool) -> None:
        self.pytest_write(text)

    @property
    def visible(self) -> str:
        return "".join(self.cells).rstrip()


def _config(screen: Screen, verbosity: int = 0):
    import types

    import pytest

    plugins = {"terminalreporter": screen}
    return types.SimpleNamespace(
        pluginmanager=types.SimpleNamespace(get_plugin=plugins.get), get_terminal_writer=lambda: screen, stash=pytest.Stash(),
        get_verbosity=lambda: verbosity,
    )


def test_the_progress_text_follows_pytests_line_and_is_erased_back_to_it():
    from pytest_qrel.plugin.progress import PROGRESS, Progress, warn_line

    screen = Screen(width=80)
    config = _config(screen)
    progress = config.stash[PROGRESS] = Progress(config)
    screen.pytest_write("suites/mini.yaml ..")
    progress.update("model 'vit' W8A8 on digits", 0, 385)
    assert screen.visible == "suites/mini.yaml .. qrel: model 'vit' W8A8 on digits: 0/385 images"  # no rate yet
    progress.last = 0.0  # past the half-second between updates
    progress.update("model 'vit' W8A8 on digits", 120, 385)
    assert screen.visible.startswith("suites/mini.yaml .. qrel: model 'vit' W8A8 on digits: 120/385 images, ")
    assert len(screen.visible) <= 79  # cut at the terminal's width, never wrapped
    progress.update("model 'vit' W8A8 on digits", 385, 385)
    assert screen.visible == "suites/mini.yaml .." and screen.cursor == len("suites/mini.yaml ..")
    screen.pytest_write(".")  # pytest goes on where it left off
    assert screen.visible == "suites/mini.yaml ..."
    progress.last = 0.0
    progress.update("model 'vit' W4A4 on digits", 10, 385)
    warn_line(config, "qrel: the outputs cache is read-only; going on without it")  # a warning mid-pass
    assert screen.lines == ["suites/mini.yaml ...", "qrel: the outputs cache is read-only; going on without it"]


def test_a_narrow_terminal_gets_no_progress_text_rather_than_a_wrapped_line():
    from pytest_qrel.plugin.progress import Progress

    screen = Screen(width=30)
    config = _config(screen)
    progress = Progress(config)
    screen.pytest_write("suites/mini.yaml::vit::W8A8 ")
    progress.update("model 'vit' W8A8 on digits", 0, 385)
    assert screen.visible == "suites/mini.yaml::vit::W8A8"


# ---------------------------------------------------------------------------- true counts, steady cadence
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rates_count_only_the_work_seen_and_a_phase_run_again_starts_over():
    from pytest_qrel.progress import Meter

    clock = Clock()
    meter = Meter(clock=clock)
    assert meter.read("QAT", 0, 100).rate is None
    first = meter.read("QAT", 1, 100)  # no time has passed: no rate, not 1e9 steps/s
    assert (first.rate, first.eta) == (None, None) and first.line() == "QAT: 1/100 steps"
    clock.now += 2.0
    r = meter.read("QAT", 5, 100)
    assert (r.rate, r.eta) == (2.5, 38.0) and r.line() == "QAT: 5/100 steps, 2.5 steps/s, ETA 38 s"
    clock.now += 38.0
    assert meter.read("QAT", 100, 100).line() == "QAT: 100/100 steps, 2.5 steps/s, 40.0 s"
    # a phase first seen mid-way rates only what it saw; the same phase again is a new one
    again = meter.read("QAT", 3, 100)
    assert (again.done, again.elapsed, again.rate) == (3, 0.0, None)
    clock.now += 1.0
    assert meter.read("QAT", 4, 100).rate == 1.0
    assert meter.read("QAT", 2, 100).elapsed == 0.0  # going backwards: a new phase, not a replay


def _log(verbosity: int = 0):
    from pytest_qrel.plugin.progress import Progress

    screen = Screen(width=200)
    screen.isatty = False
    clock = Clock()
    progress = Progress(_config(screen, verbosity), clock=clock)
    return screen, clock, progress


def test_off_a_terminal_a_running_phase_gets_a_line_at_least_every_10_s():
    screen, clock, progress = _log()
    times = []
    progress.update("vit W8A8-qat: QAT", 0, 100, "steps")
    for done in range(1, 101):  # 100 steps of 0.7 s: 70 s
        clock.now += 0.7
        before = len(screen.lines)
        progress.update("vit W8A8-qat: QAT", done, 100, "steps")
        if len(screen.lines) > before:
            times.append((clock.now, done, screen.lines[-1]))
    progress.update("model 'vit' W8A8 on digits", 0, 385)  # a short pass: no line
    clock.now += 2.0
    progress.update("model 'vit' W8A8 on digits", 385, 385)
    progress.unit("vit W8A8-qat", 72.0, 1, 385)
    lines = [line for line in screen.lines if line]
    assert len(lines) == 6 + 1 + 1  # t = 10.5, 21, ..., 63 s; the end of the phase; the unit
    starts = [1000.0] + [t for t, _, _ in times]
    assert max(b - a for a, b in zip(starts, starts[1:])) <= 10.0 + 0.7  # every 10 s, give or take a step
    for t, done, line in times[:-1]:
        assert line.startswith(f"qrel: vit W8A8-qat: QAT: {done}/100 steps, 1.4 steps/s, ETA ")
        assert abs(done - (t - 1000.0) / 0.7) < 1e-6  # the count is the work done at that time
    assert times[-1][2] == "qrel: vit W8A8-qat: QAT: 100/100 steps, 1.4 steps/s, 70.0 s"
    assert lines[-1] == "qrel: vit W8A8-qat: 1 passes, 385 images in 72.0 s"


def test_nothing_under_q_but_units_are_still_timed():
    screen, clock, progress = _log(verbosity=-1)
    for done in range(0, 101):
        clock.now += 0.7
        progress.update("vit W8A8-qat: QAT", done, 100, "steps")
    progress.unit("vit W8A8-qat", 72.0, 1, 385)
    assert screen.lines == [] and screen.visible == ""
    assert progress.take_units() == [{"unit": "vit W8A8-qat", "seconds": 72.0, "passes": 1, "images": 385}]
    assert progress.take_units() == []


def test_a_line_mid_run_leaves_the_next_letters_under_their_file_name():
    """Off a terminal, a unit's line comes while its item runs: after it, pytest's `<file> ` prefix
    is written again, so the item's letter does not stand alone on a line (it did: `.` then
    `suites/x.yaml ..` a second time)."""
    screen, clock, progress = _log()
    screen.currentfspath = screen.startpath / "suites" / "x.yaml"
    screen.pytest_write("suites/x.yaml F.")
    progress.unit("vit W8A8", 5.0, 2, 36)
    screen.pytest_write(".")  # the running item's letter, as pytest writes it: no prefix of its own
    assert screen.lines[-2:] == ["suites/x.yaml F.", "qrel: vit W8A8: 2 passes, 36 images in 5.0 s"]
    assert screen.visible == "suites/x.yaml ." and screen.currentfspath == screen.startpath / "suites" / "x.yaml"
    screen.currentfspath = "suites/x.yaml::vit::W8A8::top1 on digits delta<=1pp "  # -v: pytest rewrites its own prefix
    progress.unit("vit W4A4", 5.0, 2, 36)
    assert screen.visible == "" and screen.currentfspath is None
