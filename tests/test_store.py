"""The baseline store without a lock: concurrent writers, the cleanup rule, paths that try to leave
the folder, unwritable folders, and two suites that would share one folder (issue 18, item 3)."""

from __future__ import annotations

import errno
import hashlib
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pytest_qrel.baselines import (
    GRACE_SECONDS,
    _canonical,
    claim_baseline_folder,
    read_baseline,
    remove_unreferenced_npz,
    write_baseline,
)
from pytest_qrel.errors import BaselineError, SpecError
from pytest_qrel.metrics import id_metrics_from_samples


def content(seed: int, n: int = 60) -> tuple[dict[str, np.ndarray], dict]:
    """A small, self-consistent baseline from a seed: per-sample arrays of one labelled set and the
    metrics they give (reading a baseline recomputes them). The writers run this very source."""
    import numpy as np

    from pytest_qrel.metrics import id_metrics_from_samples

    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (n, 4))
    label = rng.integers(0, 4, n)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pred = p.argmax(1)
    arrays = {
        "label": label, "pred": pred, "confidence": p.max(1).astype(np.float32),
        "correct": pred == label, "nll": (-np.log(p[np.arange(n), label])).astype(np.float32),
    }
    return {f"FP32|d|{k}": v for k, v in arrays.items()}, {"id": id_metrics_from_samples(arrays)}


WRITER = '''
import os, random, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from content import content
import pytest_qrel.baselines as baselines

_fsync = os.fsync
def jittered_fsync(fd):  # a slow, uneven disk widens every window between the writers' steps
    time.sleep(random.uniform(0.0, 0.004))
    _fsync(fd)
os.fsync = jittered_fsync

path = sys.argv[1]
for line in sys.stdin:
    go_at, seed = line.split()
    arrays, metrics = content(int(seed))
    time.sleep(max(0.0, float(go_at) - time.time()) + random.uniform(0.0, 0.004))
    baselines.write_baseline(
        baselines.Path(path), suite="s", model="m", fingerprint={"seed": int(seed)}, metrics=metrics, arrays=arrays,
        run_id=seed, created="now", id_dataset="d",
    )
    print("done", flush=True)
'''


def _write(path: Path, seed: int, **kwargs) -> None:
    arrays, metrics = content(seed)
    write_baseline(
        path, suite="s", model="m", fingerprint={"seed": seed}, metrics=metrics, arrays=arrays, run_id=str(seed), created="now",
        id_dataset="d", **kwargs,
    )


def _age(folder: Path, seconds: float) -> None:
    """Move every file's mtime ``seconds`` into the past (a write after a quiet period)."""
    for p in folder.iterdir():
        st = p.stat()
        os.utime(p, (st.st_atime - seconds, st.st_mtime - seconds))


def _seed_of(path: Path) -> int:
    return read_baseline(path, update_command="u").fingerprint["seed"]


# ------------------------------------------------------------------ concurrent writers, no lock


def test_two_unlocked_concurrent_writers_leave_a_valid_pair_every_time(tmp_path):
    """20 trials: two writer processes store different content at the same moment, with no lock,
    over an existing pair; after each, the JSON verifies against its npz and holds one of the two
    new contents. Half the trials start after a quiet period (every file aged past the grace
    period), so both writers' cleanups run while the other writes: each must leave the other's npz."""
    (tmp_path / "content.py").write_text("from __future__ import annotations\nimport numpy as np\n\n" + inspect.getsource(content))
    (tmp_path / "writer.py").write_text(WRITER)
    folder = tmp_path / "b"
    path = folder / "m.json"
    _write(path, 0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")) if p)}
    writers = [
        subprocess.Popen([sys.executable, str(tmp_path / "writer.py"), str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outcomes = []
    try:
        for trial in range(20):
            if trial % 2:
                _age(folder, 2 * GRACE_SECONDS)
            seeds = (2 * trial + 1, 2 * trial + 2)
            go_at = time.time() + 0.1
            for w, seed in zip(writers, seeds):
                assert w.stdin is not None
                w.stdin.write(f"{go_at} {seed}\n")
                w.stdin.flush()
            for w in writers:
                assert w.stdout is not None
                assert w.stdout.readline().strip() == "done", f"a writer failed in trial {trial}"
            try:
                outcomes.append(_seed_of(path) in seeds)
            except BaselineError as exc:
                outcomes.append(f"trial {trial}: {exc}")
    finally:
        for w in writers:
            if w.stdin:
                w.stdin.close()
            w.wait(timeout=60)
            if w.stdout:
                w.stdout.close()
    assert outcomes == [True] * 20, outcomes
    assert all(w.returncode == 0 for w in writers)


# ------------------------------------------------------------------ the cleanup rule


def test_cleanup_removes_only_strays_older_than_the_grace_period_after_a_quiet_period(tmp_path):
    folder = tmp_path / "b"
    path = folder / "m.json"
    _write(path, 1)
    _write(path, 2)  # the npz of seed 1 is now a stray, but young: kept
    _write(path, 3)
    assert len(list(folder.glob("m.*.npz"))) == 3 and _seed_of(path) == 3
    _age(folder, 2 * GRACE_SECONDS)
    other_model = folder / "mm.0123456789ab.npz"  # another model's file is never touched
    other_model.write_bytes(b"x")
    os.utime(other_model, (0, 0))
    _write(path, 4)  # after the quiet period: the strays of 1 and 2 go; 3's npz (named by the JSON it replaces) stays
    names = sorted(p.name for p in folder.glob("m.*.npz"))
    assert len(names) == 2 and _seed_of(path) == 4
    assert other_model.exists()
    _write(path, 5)  # the JSON is young again: nothing goes, whatever the strays' age
    assert len(list(folder.glob("m.*.npz"))) == 3


def test_cleanup_keeps_a_young_npz_of_a_writer_not_yet_committed(tmp_path):
    folder = tmp_path / "b"
    path = folder / "m.json"
    _write(path, 1)
    _age(folder, 2 * GRACE_SECONDS)
    pending = folder / "m.aaaaaaaaaaaa.npz"  # another writer's npz, written a moment ago, its JSON not yet committed
    pending.write_bytes(b"pending")
    stale = folder / "m.bbbbbbbbbbbb.npz"
    stale.write_bytes(b"stale")
    os.utime(stale, (time.time() - 2 * GRACE_SECONDS,) * 2)
    keep = folder / "m.cccccccccccc.npz"
    keep.write_bytes(b"mine")
    removed = remove_unreferenced_npz(path, "m", keep=keep)
    assert removed == [stale] and pending.exists() and keep.exists()
    assert read_baseline(path, update_command="u")  # the committed pair is untouched


def test_cleanup_does_nothing_when_the_json_cannot_be_read(tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "m.json").write_text("{torn")
    stray = folder / "m.bbbbbbbbbbbb.npz"
    stray.write_bytes(b"x")
    keep = folder / "m.cccccccccccc.npz"
    keep.write_bytes(b"y")
    _age(folder, 2 * GRACE_SECONDS)
    os.utime(keep)
    assert remove_unreferenced_npz(folder / "m.json", "m", keep=keep) == [] and stray.exists()


def test_a_writer_whose_npz_was_removed_before_its_commit_writes_it_again(tmp_path, monkeypatch):
    """A writer stalled past the grace period may find its npz removed by another's cleanup; it
    checks after its commit and writes the (content-addressed) npz again."""
    from pytest_qrel import baselines

    path = tmp_path / "b" / "m.json"
    _write(path, 1)
    real = baselines.atomic_write_bytes

    def commit_after_someone_removed_my_npz(target, data):
        target = Path(target)
        if target.suffix == ".json":
            for npz in target.parent.glob("m.*.npz"):
                npz.unlink()
        return real(target, data)

    monkeypatch.setattr(baselines, "atomic_write_bytes", commit_after_someone_removed_my_npz)
    _write(path, 2)
    monkeypatch.setattr(baselines, "atomic_write_bytes", real)
    assert _seed_of(path) == 2


# ------------------------------------------------------------------ what the JSON may name


def _resign(path: Path, record: dict) -> None:
    record["content_sha256"] = hashlib.sha256(_canonical(record)).hexdigest()
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(npz="../../x.npz"), "names the npz '../../x.npz', not its own arrays m.{sha12}.npz in the same folder"),
        (lambda r: r.update(npz="/etc/passwd"), "names the npz '/etc/passwd', not its own arrays m.{sha12}.npz in the same folder"),
        (lambda r: r.update(npz="m.npz"), "names the npz 'm.npz', not its own arrays m.{sha12}.npz in the same folder"),
        (lambda r: r.update(npz_sha256="../x"), "has an npz_sha256 that is not a SHA-256 ('../x')"),
        (lambda r: r.update(model="vit"), "was written for model 'vit', not 'm' (a copied or renamed file)"),
        (lambda r: r.update(variants=[]), "has field 'variants' of type list, not dict"),
        (lambda r: r.update(metrics="high"), "has field 'metrics' of type str, not dict"),
        (lambda r: r.pop("roles"), "lacks field 'roles'"),
        (lambda r: r.update(roles={"id": 3}), "has malformed roles"),
        (lambda r: r.update(variants={"FP32+t": {"metrics": []}}), "has a malformed variants.FP32+t"),
    ],
)
def test_a_forged_record_is_one_line_and_reads_nothing_outside_the_folder(tmp_path, edit, message):
    path = tmp_path / "b" / "m.json"
    _write(path, 1)
    record = json.loads(path.read_text())
    outside = tmp_path / "x.npz"
    outside.write_bytes((path.parent / record["npz"]).read_bytes())  # a perfectly good npz, outside
    edit(record)
    _resign(path, record)  # the digests recomputed: only the structure can catch it
    with pytest.raises(BaselineError) as info:
        read_baseline(path, update_command="pytest --qrel-update-baselines")
    text = str(info.value)
    sha12 = json.loads(path.read_text()).get("npz_sha256", "")[:12]
    assert text.startswith(f"FP32 baseline {path} ") and message.replace("{sha12}", sha12) in text, text
    assert text.endswith("; re-create it with: pytest --qrel-update-baselines") and "\n" not in text


# ------------------------------------------------------------------ evidence: arrays vs metrics


def test_another_models_npz_with_the_digests_recomputed_is_refused(tmp_path):
    """A swapped pair that every checksum accepts: the arrays do not give the stored metrics."""
    mine, theirs = tmp_path / "a" / "m.json", tmp_path / "b" / "m.json"
    _write(mine, 1)
    _write(theirs, 2)
    record = json.loads(mine.read_text())
    other = json.loads(theirs.read_text())
    (mine.parent / other["npz"]).write_bytes((theirs.parent / other["npz"]).read_bytes())
    record.update(npz=other["npz"], npz_sha256=other["npz_sha256"])
    _resign(mine, record)
    with pytest.raises(BaselineError) as info:
        read_baseline(mine, update_command="u")
    text = str(info.value)
    assert f"FP32 baseline {mine} is refused: the arrays do not reproduce the stored metrics (metrics.id." in text
    assert f"from {other['npz']}; " in text and "more differ" in text and text.endswith("; re-create it with: u")
    assert read_baseline(theirs, update_command="u").fingerprint == {"seed": 2}  # the pair itself is fine


def test_a_stored_metric_the_arrays_cannot_give_is_refused(tmp_path):
    path = tmp_path / "b" / "m.json"
    arrays, metrics = content(1)
    metrics["shifted"] = {"fog": dict(metrics["id"])}  # no arrays of 'fog' are stored
    write_baseline(path, suite="s", model="m", fingerprint={}, metrics=metrics, arrays=arrays, run_id="r", created="now", id_dataset="d")
    with pytest.raises(BaselineError, match=r"metrics\.shifted\.fog\.\w+ is [\d.]+ in the JSON, nothing \(no arrays for it\)"):
        read_baseline(path, update_command="u")


def test_metrics_recomputed_within_tolerance_are_accepted(tmp_path):
    from pytest_qrel.baselines import METRIC_TOLERANCE

    path = tmp_path / "b" / "m.json"
    arrays, metrics = content(1)
    exact = id_metrics_from_samples({k.split("|")[2]: v for k, v in arrays.items()})
    assert metrics["id"] == exact
    metrics["id"]["top1"] += METRIC_TOLERANCE / 2  # rounding of another numpy: accepted
    write_baseline(path, suite="s", model="m", fingerprint={}, metrics=metrics, arrays=arrays, run_id="r", created="now", id_dataset="d")
    assert read_baseline(path, update_command="u").metrics["id"]["top1"] == metrics["id"]["top1"]
    metrics["id"]["top1"] += 2 * METRIC_TOLERANCE
    write_baseline(path, suite="s", model="m", fingerprint={}, metrics=metrics, arrays=arrays, run_id="r", created="now", id_dataset="d")
    with pytest.raises(BaselineError, match=r"metrics\.id\.top1 is .* in the JSON"):
        read_baseline(path, update_command="u")


# ------------------------------------------------------------------ folders that cannot be written


def test_a_baseline_folder_under_a_file_is_one_line_naming_the_path(tmp_path):
    (tmp_path / "baselines").write_text("not a folder")
    path = tmp_path / "baselines" / "s" / "m.json"
    with pytest.raises(BaselineError) as info:
        _write(path, 1)
    assert str(info.value).startswith(f"cannot write the FP32 baseline {path}: ") and "(fix: make " in str(info.value)


def test_a_name_too_long_for_the_file_system_is_one_line(tmp_path):
    path = tmp_path / "b" / ("m" * 300 + ".json")
    arrays, metrics = content(1)
    with pytest.raises(BaselineError) as info:
        write_baseline(path, suite="s", model="m" * 300, fingerprint={}, metrics=metrics, arrays=arrays, run_id="r", created="now", id_dataset="d")
    assert str(info.value).startswith(f"cannot write the FP32 baseline {path}: File name too long")


def test_a_read_only_folder_is_one_line_naming_the_path(tmp_path, monkeypatch):
    """As root (this machine's CI), chmod does not stop writes: the PermissionError is injected
    where the OS would raise it; as another user the folder is made read-only for real."""
    import pytest_qrel.io as qio

    folder = tmp_path / "baselines" / "s"
    folder.mkdir(parents=True)
    if os.geteuid() == 0:
        real_open = os.open

        def read_only_open(file, flags, *args, **kwargs):
            if str(file).startswith(str(folder)) and flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
            return real_open(file, flags, *args, **kwargs)

        monkeypatch.setattr(qio.os, "open", read_only_open)
    else:
        folder.chmod(0o555)
    try:
        with pytest.raises(BaselineError) as info:
            _write(folder / "m.json", 1)
    finally:
        folder.chmod(0o755)
    text = str(info.value)
    assert text.startswith(f"cannot write the FP32 baseline {folder / 'm.json'}: Permission denied ({folder}/")
    assert text.endswith(f"(fix: make {folder} writable, or free space on its disk)")


PLUGIN_SUITE = """\
version: 1
name: {name}
models:
  vit: {{source: "embedded:digits_vit"}}
datasets:
  id: {{name: digits, source: "embedded:digits"}}
  ood: [{{name: noise, source: "embedded:noise"}}]
quantizers:
  W8A8: {{method: minmax}}
scores: [msp]
checks:
  - "FP32 top1 >= 0.5"
"""


def test_update_baselines_into_an_unwritable_folder_is_one_line(pytester, suite_file):
    suite_file(PLUGIN_SUITE.format(name="a"), "a")
    (pytester.path / "baselines").write_text("a file where the folder should be")
    result = pytester.runpytest("--qrel-suite", "suites/a.yaml", "--qrel-update-baselines", "-p", "no:randomly", "--qrel-no-cache")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*cannot write the FP32 baseline baselines/a/vit.json: * (fix: make baselines/a writable, or free space on its disk)"])
    assert "Traceback" not in result.stdout.str()


# ------------------------------------------------------------------ two suites, one folder


def test_claim_baseline_folder(tmp_path):
    claims: dict = {}
    claim_baseline_folder(claims, "demo", tmp_path / "a.yaml")
    claim_baseline_folder(claims, "demo", tmp_path / "a.yaml")  # the same file again: fine
    claim_baseline_folder(claims, "other", tmp_path / "b.yaml")
    for name in ("demo", "Demo"):  # one folder on macOS and Windows
        with pytest.raises(SpecError) as info:
            claim_baseline_folder(claims, name, tmp_path / "c.yaml")
        assert str(info.value) == (
            f"{tmp_path / 'c.yaml'}: field 'name': suite '{name}' has the name of another suite, {tmp_path / 'a.yaml'}: both would "
            f"keep their FP32 baselines in the one folder '{name}/' and overwrite each other's (fix: give each suite file its own 'name:')"
        )


def test_two_suites_with_one_name_are_a_collection_error_naming_both(pytester, suite_file):
    for file in ("a", "b"):
        suite_file(PLUGIN_SUITE.format(name="shared"), file)
    result = pytester.runpytest("--qrel-suite", "suites/a.yaml", "--qrel-suite", "suites/b.yaml", "--co", "-q", "-p", "no:randomly")
    assert result.ret != 0
    out = result.stdout.str()
    assert f"suites/b.yaml: field 'name': suite 'shared' has the name of another suite, {pytester.path / 'suites/a.yaml'}" in out, out
    assert "Traceback" not in out


def test_an_unwritable_folder_fails_before_the_fp32_pass(tmp_path):
    from pytest_qrel import Engine, load_suite

    (tmp_path / "suite.yaml").write_text(PLUGIN_SUITE.format(name="a"))
    (tmp_path / "baselines").write_text("a file where the folder should be")
    engine = Engine(baseline_dir=tmp_path / "baselines", update_baselines=True)
    with pytest.raises(BaselineError, match="cannot write the FP32 baseline"):
        engine.baseline(load_suite(tmp_path / "suite.yaml"), "vit")
    assert sum(engine.forward_passes.values()) == 0 and sum(engine.reproduction_passes.values()) == 0
