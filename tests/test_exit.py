"""The exit code is the verdict: a run is green only if every planned check sent a verdict.

- a model whose forward calls ``os._exit(0)`` ends a serial run red (the supervised child's
  death; :mod:`pytest_qrel.plugin.supervisor`) and an ``-n 2`` run red (xdist sees the worker die), with
  the report and the results file red too;
- SIGTERM mid-run writes red outputs before the process exits;
- a worker killed while a process it started keeps its channel open does not hang the run
  (:mod:`pytest_qrel.plugin.watchdog`): the run ends red while that process is still alive;
- the supervisor never forks a session nested in another one (pytester's in-process runs).

The end-to-end runs use a tiny linear model (no timm import) whose forward misbehaves on the
W4A4 unit when an environment variable says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_qrel.plugin import supervisor
from pytest_qrel.plugin.supervisor import (
    ChildEnd,
    InterruptHandlers,
    Terminated,
    fork_session,
    read_journal,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs os.fork (Linux)")

MODEL = '''
import os, signal, time
import torch

CALLS = 0


class Tiny(torch.nn.Module):
    num_classes = 8

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc = torch.nn.Linear(256, 8)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(8, 256, generator=g) * 0.3)
            self.fc.bias.zero_()

    def forward(self, x):
        global CALLS
        if getattr(self.fc, "weight_bits", None) == 4:
            CALLS += 1
            once = os.environ.get("QREL_ONCE")
            if CALLS == 3 and not (once and os.path.exists(once)):
                if once:
                    open(once, "w").close()
                what = os.environ.get("QREL_MISBEHAVE", "")
                if what == "exit0":
                    os._exit(0)
                if what == "hang":  # signals the test, then takes its time
                    open(os.environ["QREL_MARK"], "w").close()
                    time.sleep(120)
                if what == "orphan":  # a process that keeps this worker's channel open, then a kill
                    if os.fork() == 0:
                        with open(os.environ["QREL_ORPHAN_PID"], "w") as fh:
                            fh.write(str(os.getpid()))
                        time.sleep(600)
                        os._exit(0)
                    time.sleep(0.5)
                    os.kill(os.getpid(), signal.SIGKILL)
        return self.fc(x.flatten(1))


def preprocess(image):
    return torch.as_tensor(image, dtype=torch.float32).reshape(1, 16, 16)


def build():
    return Tiny(), preprocess, "a fixed random linear layer on 16x16 digits"
'''

SUITE = """\
version: 1
name: gate
models:
  m: {source: "python:model.py:build"}
datasets:
  id: {name: digits, source: "embedded:digits"}
  ood: [{name: far, source: "embedded:noise"}]
quantizers:
  W8A8: {method: minmax, weight_bits: 8, act_bits: 8, calibration: {samples: 16}}
  W4A4: {method: minmax, weight_bits: 4, act_bits: 4, calibration: {samples: 16}}
checks:
  - "W8A8 top1 >= 0"
  - "W8A8 ece <= 1"
  - "W4A4 top1 >= 0"
  - "W4A4 ece <= 1"
"""
W8A8_TOP1 = "suites/gate.yaml::m::W8A8::top1 on digits value>=0"
W4A4_TOP1 = "suites/gate.yaml::m::W4A4::top1 on digits value>=0"
W4A4_ECE = "suites/gate.yaml::m::W4A4::ece on digits value<=1"
ARGS = ("--qrel-suite", "suites/gate.yaml", "-p", "no:hypothesispytest", "-p", "no:randomly", "--qrel-no-cache",
        "--qrel-report", "r/gate.html", "--qrel-results", "r/gate.json")


@pytest.fixture
def gate(pytester: pytest.Pytester) -> Path:
    """The suite and its FP32 baseline (written in this process, where nothing misbehaves)."""
    from pytest_qrel import Engine, load_suite

    (pytester.path / "suites").mkdir()
    (pytester.path / "suites/model.py").write_text(MODEL)
    (pytester.path / "suites/gate.yaml").write_text(SUITE)
    Engine(baseline_dir=pytester.path / "baselines", update_baselines=True).baseline(load_suite(pytester.path / "suites/gate.yaml"), "m")
    return pytester.path


def outputs(root: Path) -> tuple[str, str, dict[str, str]]:
    """The Markdown summary, the HTML report and ``{node id: outcome}`` of the results file."""
    doc = json.loads((root / "r/gate.json").read_text())
    outcomes = {v["nodeid"]: v["outcome"] for v in doc["results"]["verdicts"]}
    return (root / "r/gate.md").read_text(), (root / "r/gate.html").read_text(), outcomes


def assert_red(md: str, html: str) -> None:
    assert md.splitlines()[0].startswith("## \u274c pytest-qrel: FAIL"), md
    assert 'data-status="FAIL"' in html and 'data-status="PASS"' not in html


# ---------------------------------------------------------------------------- os._exit(0) in forward
@pytest.mark.slow
def test_os_exit_0_in_forward_ends_a_serial_run_red(gate, pytester, monkeypatch):
    monkeypatch.setenv("QREL_MISBEHAVE", "exit0")
    result = pytester.runpytest_subprocess(*ARGS, "--junitxml", "r/junit.xml")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    assert "Traceback" not in out and "INTERNALERROR" not in out
    result.stdout.fnmatch_lines([
        "*qrel: the process running the checks exited with status 0 before the run finished; what it reported:*",
        "gate: 4 checks: 1 error, 1 not run, 2 passed",
        f"ERROR: the run ended without finishing: 2 of 4 checks produced no verdict; last unit: m::W4A4 "
        f"(the process running the checks exited with status 0 during {W4A4_TOP1})",
        "*= 1 failed, 2 passed, 1 warning in *",  # the warning: OOD set far is declared, never read
    ])
    md, html, outcomes = outputs(gate)
    assert_red(md, html)
    assert outcomes == {W8A8_TOP1: "passed", "suites/gate.yaml::m::W8A8::ece on digits value<=1": "passed",
                        W4A4_TOP1: "error", W4A4_ECE: "not run"}
    units = json.loads((gate / "r/gate.json").read_text())["results"]["units"]
    assert ("m", "W8A8") in {(u["model"], u["quantizer"]) for u in units}  # what arrived before the death is kept
    junit = (gate / "r/junit.xml").read_text()
    assert 'failures="1"' in junit or 'errors="1"' in junit  # the lost check is not green in junit either


@pytest.mark.slow
def test_os_exit_0_in_a_worker_ends_an_xdist_run_red(gate, pytester, monkeypatch):
    pytest.importorskip("xdist")
    monkeypatch.setenv("QREL_MISBEHAVE", "exit0")
    result = pytester.runpytest_subprocess(*ARGS, "-n", "2", "--max-worker-restart", "0")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines([
        "gate: 4 checks: 1 error, 1 not run, 2 passed",
        f"ERROR: 1 check(s) did not run, e.g. {W4A4_ECE}; the run is marked failed",
        f"ERROR: 1 check(s) were lost to a crashed worker, e.g. {W4A4_TOP1}",
    ])
    md, html, outcomes = outputs(gate)
    assert_red(md, html)
    assert outcomes[W4A4_TOP1] == "error" and outcomes[W4A4_ECE] == "not run"


# ---------------------------------------------------------------------------- SIGTERM
def _terminate_when_marked(pytester: pytest.Pytester, *extra: str) -> tuple[int, str]:
    mark = pytester.path / "hang.mark"
    env = {**os.environ, "QREL_MISBEHAVE": "hang", "QREL_MARK": str(mark)}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *ARGS, *extra], cwd=pytester.path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not mark.exists():
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the run never reached the W4A4 unit"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # to the pytest process CI started, as CI would
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out.decode()


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_sigterm_mid_run_writes_red_outputs(gate, pytester, extra):
    if extra:
        pytest.importorskip("xdist")
    code, out = _terminate_when_marked(pytester, *extra)
    assert code == pytest.ExitCode.INTERRUPTED, out
    assert "Traceback" not in out and "INTERNALERROR" not in out
    assert "Terminated: SIGTERM" in out
    md, html, outcomes = outputs(gate)
    assert_red(md, html)
    assert outcomes[W4A4_TOP1] == outcomes[W4A4_ECE] == "not run"
    doc = json.loads((gate / "r/gate.json").read_text())
    messages = {v["nodeid"]: v["message"] for v in doc["results"]["verdicts"]}
    assert messages[W4A4_ECE] == "did not run: the run was terminated (SIGTERM)"


# ---------------------------------------------------------------------------- a worker death that used to hang
@pytest.mark.slow
def test_a_killed_worker_whose_channel_stays_open_ends_the_run_red(gate, pytester, monkeypatch):
    """The W4A4 worker forks a process that lives 600 s (holding the worker's execnet pipes) and
    is then killed, while the other worker has already been told to shut down (two units on two
    workers: both are told at once). Without the watchdog xdist waits for that process; with it
    the run ends red, the check named, while the process is still alive."""
    pytest.importorskip("xdist")
    orphan = gate / "orphan.pid"
    monkeypatch.setenv("QREL_MISBEHAVE", "orphan")
    monkeypatch.setenv("QREL_ONCE", str(gate / "died.once"))
    monkeypatch.setenv("QREL_ORPHAN_PID", str(orphan))
    try:
        result = pytester.runpytest_subprocess(*ARGS, "-n", "2", timeout=400)
        pid = int(orphan.read_text())
        os.kill(pid, 0)  # still alive: the run ended without waiting for it
    finally:
        if orphan.exists() and orphan.read_text():
            try:
                os.kill(int(orphan.read_text()), signal.SIGKILL)  # the process this test's model started
            except ProcessLookupError:
                pass
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    result.stdout.fnmatch_lines([
        "*node down: worker process killed by signal 9, but its channel stayed open (a process it started still holds it)*",
        "*replacing crashed worker*",
        "gate: 4 checks: 1 error, 3 passed",
        f"ERROR: 1 check(s) were lost to a crashed worker, e.g. {W4A4_TOP1}",
    ])
    md, html, _ = outputs(gate)
    assert_red(md, html)


# ---------------------------------------------------------------------------- where the supervisor forks
def test_a_nested_in_process_run_never_forks_nor_takes_sigterm(pytester, monkeypatch):
    """pytester's in-process run is a session nested in this one: forking there would run the
    rest of this test session twice. (Its checks are skipped -- data behind an unset variable --
    so no model runs: what matters is that the run reaches its checks.)"""
    def no_fork(*args, **kwargs):
        raise AssertionError("the supervisor forked inside another pytest session")

    monkeypatch.setattr(supervisor, "fork_session", no_fork)
    monkeypatch.delenv("QREL_NO_SUCH_DATA", raising=False)
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites/gate.yaml").write_text(
        SUITE.replace('source: "embedded:noise"', 'source: "imagefolder:${QREL_NO_SUCH_DATA}/far"')
        .replace('"W8A8 top1 >= 0"', '"W8A8 auroc(msp) on far >= 0"').replace('"W8A8 ece <= 1"', '"W4A4 auroc(msp) on far >= 0"')
        .replace('  - "W4A4 top1 >= 0"\n  - "W4A4 ece <= 1"\n', "")
    )
    handler = signal.getsignal(signal.SIGTERM)
    result = pytester.runpytest("--qrel-suite", "suites/gate.yaml", "--qrel-allow-skip-all", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=2)
    assert signal.getsignal(signal.SIGTERM) is handler
    pytester.makepyfile(test_plain="def test_ok():\n    pass\n")
    assert pytester.runpytest("test_plain.py").ret == 0


# ---------------------------------------------------------------------------- the supervisor's parts
def test_fork_session_reports_how_the_child_ended():
    def finish(status: int, exit_code: int):
        def child(journal):
            journal.write("report", data={"nodeid": "a"})
            journal.write("done", status=status)
            os._exit(exit_code)
        return child

    end = fork_session(finish(1, 1))
    assert (end.finished, end.exit_code, end.signal) == (True, 1, None)
    assert [e["kind"] for e in end.events] == ["report", "done"]
    end = fork_session(finish(1, 0))  # os._exit(0) after the session said 1: still 1
    assert (end.finished, end.exit_code) == (True, 1)

    def vanish(journal):
        journal.write("logstart", nodeid="a", location=["f", 1, "a"])
        os._exit(0)

    end = fork_session(vanish)
    assert (end.finished, end.status, end.describe()) == (False, 0, "exited with status 0")

    def killed(journal):
        os.kill(os.getpid(), signal.SIGKILL)

    end = fork_session(killed)
    assert (end.finished, end.status, end.signal, end.describe()) == (False, 128 + 9, 9, "was killed by SIGKILL")
    assert ChildEnd(status=139, signal=11, done_status=0).exit_code == 139  # a crash at exit after a green session


def test_a_torn_journal_line_ends_the_journal(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"kind": "logstart", "nodeid": "a"}\n{"kind": "report", "da')
    assert read_journal(path) == [{"kind": "logstart", "nodeid": "a"}]


def test_sigterm_interrupts_once_then_is_only_recorded():
    before = signal.getsignal(signal.SIGTERM)
    handlers = InterruptHandlers()
    assert handlers.install()
    try:
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs between bytecodes
        os.kill(os.getpid(), signal.SIGTERM)  # a second one (forwarded by the parent): ignored
        time.sleep(0.1)
        assert handlers.terminated
    finally:
        handlers.restore()
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_while_writing_outputs_is_recorded_not_raised():
    handlers = InterruptHandlers()
    assert handlers.install()
    try:
        handlers.finishing = True
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert handlers.terminated
    finally:
        handlers.restore()


# ---------------------------------------------------------------------------- the watchdog's rules
class _Popen:
    def __init__(self, code=None):
        self.code, self.killed = code, 0

    def poll(self):
        return self.code

    def kill(self):
        self.killed += 1


class _Node:
    def __init__(self, name, code=None, shutting_down=False):
        self.gateway = type("G", (), {"id": name, "_io": type("IO", (), {"popen": _Popen(code)})()})()
        self._down = False
        self.shutting_down = shutting_down
        self.events = []

    def notify_inproc(self, name, **kwargs):
        self.events.append((name, kwargs["error"]))


def _watched(*nodes, pending=None):
    from pytest_qrel.plugin.watchdog import WorkerWatchdog, pending_items

    sched = type("S", (), {"assigned_work": {n: {"scope": {"a": not (pending or {}).get(n.gateway.id)}} for n in nodes}})()
    lines = []
    dog = WorkerWatchdog(pending=lambda node: pending_items(sched, node), warn=lines.append, dead_grace=4.0, shutdown_grace=60.0)
    for node in nodes:
        dog.watch(node)
    return dog, lines


def test_watchdog_reports_a_dead_worker_once_after_its_grace():
    dead, alive = _Node("gw0", code=-9), _Node("gw1")
    dog, _ = _watched(dead, alive)
    dog.check(100.0)
    dog.check(103.9)
    assert dead.events == [] and not dead._down  # execnet gets its chance to report it first
    dog.check(104.0)
    dog.check(110.0)
    assert dead.events == [("errordown", "worker process killed by signal 9, but its channel stayed open "
                                         "(a process it started still holds it)")]
    assert dead._down and alive.events == [] and dog.reported == ["gw0"]


def test_watchdog_leaves_a_worker_xdist_took_down():
    dead = _Node("gw0", code=-9)
    dog, _ = _watched(dead)
    dog.forget(dead)  # pytest_testnodedown: xdist already handles it
    dog.check(100.0)
    dog.check(110.0)
    assert dead.events == [] and dog.reported == []


def test_watchdog_stops_a_worker_that_does_not_shut_down_with_nothing_left():
    idle, busy = _Node("gw0", shutting_down=True), _Node("gw1", shutting_down=True)
    dog, lines = _watched(idle, busy, pending={"gw1": True})
    dog.check(0.0)
    dog.check(59.0)
    assert idle.gateway._io.popen.killed == 0
    dog.check(60.0)
    assert idle.gateway._io.popen.killed == 1 and busy.gateway._io.popen.killed == 0
    assert lines == ["qrel: worker gw0 was told to shut down 60 s ago with no checks left and is still running; stopping it"]


def test_the_child_dies_with_a_killed_parent(tmp_path):
    """kill -9 of the pytest process CI started ends the checks too (PR_SET_PDEATHSIG): no orphan
    keeps writing baselines or cache after the run was killed."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    pid_file = tmp_path / "child.pid"
    code = textwrap.dedent(f"""
        import os, time
        from pytest_qrel.plugin.supervisor import fork_session

        def child(journal):
            open({str(pid_file)!r}, "w").write(str(os.getpid()))
            time.sleep(60)
            os._exit(0)

        fork_session(child)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        child = int(pid_file.read_text())
        parent.kill()
        parent.wait()
        for _ in range(200):  # the kernel delivers the SIGKILL at once; reaping takes a moment
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            if Path(f"/proc/{child}/stat").exists() and Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
                break  # dead, waiting to be reaped by init
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the child outlived its killed parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
