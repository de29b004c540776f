"""`qrel init` and the first-suite walkthrough (docs/first-suite.md), run as the page says."""

from __future__ import annotations

import re
import runpy
import shlex
from pathlib import Path

import pytest

from pytest_qrel import load_suite
from pytest_qrel._version import __version__
from pytest_qrel.cli import main as qrel_main
from pytest_qrel.init_suite import InitError, InitRequest, detect_layout, write_starter_suite

DOC = Path(__file__).resolve().parents[1] / "docs" / "first-suite.md"


def _jpegs(folder: Path, count: int = 3) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / f"{i}.jpg")


def test_the_standard_layout_gives_split_dirs_and_paths_relative_to_the_suite(tmp_path, monkeypatch, capsys):
    for split in ("train", "val", "test"):
        for cls in ("cat", "dog"):
            _jpegs(tmp_path / "data" / "pets" / split / cls)
    _jpegs(tmp_path / "data" / "pets" / "ood", 12)
    monkeypatch.chdir(tmp_path)
    assert qrel_main(["init", "vit_tiny_patch16_224", "data/pets", "--random-init"]) == 0
    out = capsys.readouterr().out
    assert "wrote suites/pets.yaml" in out and "relative to suites/" in out and "dry run" in out
    text = (tmp_path / "suites/pets.yaml").read_text()
    assert "relative to this file's folder" in text and "pretrained: false" in text and "chance level" in text
    suite = load_suite(tmp_path / "suites/pets.yaml")
    model = suite.models["vit_tiny_patch16_224"]
    assert model.source == "timm:vit_tiny_patch16_224" and model.options == {"pretrained": False, "num_classes": 2}
    assert suite.id_dataset.source == "imagefolder:../data/pets"
    assert suite.id_dataset.options["split_dirs"] == {"train": "train", "val": "val", "test": "test"}
    assert [(d.source, d.options) for d in suite.ood_datasets.values()] == [("imagefolder:../data/pets/ood", {"labels": "none"})]
    assert suite.quantizers["W8A8"].calibration.samples == 6  # the 6 training images, not more
    # the same data read from the suite's folder: the paths resolve against the suite file
    from pytest_qrel.data import load_dataset

    ds = load_dataset(suite.id_dataset.source, split="test", options=suite.id_dataset.options, base_dir=suite.path.parent)
    assert len(ds) == 6 and ds.class_order == ["cat", "dog"]
    # never over an existing file: one line, exit code 2, the file unchanged
    assert qrel_main(["init", "vit_tiny_patch16_224", "data/pets"]) == 2
    assert "already exists; qrel init never overwrites a file" in capsys.readouterr().err
    assert (tmp_path / "suites/pets.yaml").read_text() == text


def test_other_layouts(tmp_path):
    _jpegs(tmp_path / "imagenet" / "train" / "n01440764")
    _jpegs(tmp_path / "imagenet" / "train" / "n01443537")
    _jpegs(tmp_path / "imagenet" / "val" / "n01440764")
    _jpegs(tmp_path / "imagenet" / "val" / "n01443537")
    layout = detect_layout(tmp_path / "imagenet")
    assert layout.split_dirs == {"train": "train", "test": "val"} and layout.images == {"train": 6, "test": 6}
    out, _ = write_starter_suite(InitRequest("timm:deit_tiny_patch16_224", tmp_path / "imagenet", tmp_path / "s" / "in.yaml"))
    suite = load_suite(out)
    assert suite.id_dataset.options == {"split_dirs": {"train": "train", "test": "val"}, "classes": "imagenet1k"}
    assert [d.source for d in suite.ood_datasets.values()] == ["embedded:noise"]  # no ood/ folder: the shipped one
    # class folders without splits: measured, and (saying so) the calibration images too
    _jpegs(tmp_path / "flat" / "a")
    _jpegs(tmp_path / "flat" / "b")
    out, layout = write_starter_suite(InitRequest("embedded:digits_vit", tmp_path / "flat", tmp_path / "flat.yaml"))
    assert layout.split_dirs == {} and "the same images calibrate and are measured" in out.read_text()
    assert load_suite(out).id_dataset.options == {"train": "flat"}
    # loose images are no ID set; nor one class; nor a folder that is not there
    _jpegs(tmp_path / "loose")
    _jpegs(tmp_path / "one" / "a")
    for folder, message in [("loose", "only loose images, no class folders"), ("one", "1 class folder(s) (a)"), ("nope", "no such folder")]:
        with pytest.raises(InitError, match=re.escape(message)):
            write_starter_suite(InitRequest("timm:x", tmp_path / folder, tmp_path / f"{folder}.yaml"))
        assert not (tmp_path / f"{folder}.yaml").exists()


def _walkthrough() -> tuple[str, list[str]]:
    """The page's Python snippet and its `$ ` command lines, in order."""
    text = DOC.read_text()
    snippet = re.search(r"```python\n(.*?)```", text, re.S)
    assert snippet is not None
    commands = [line[2:] for block in re.findall(r"```console\n(.*?)```", text, re.S) for line in block.splitlines()
                if line.startswith("$ ")]
    return snippet.group(1), commands


@pytest.mark.slow
def test_the_first_suite_walkthrough_runs_as_written(pytester):
    """docs/first-suite.md step by step: the snippet's JPEG folders, `qrel init` with a random-init
    timm model, the baseline, the audit (passing), and the pasted node id."""
    snippet, commands = _walkthrough()
    (pytester.path / "make_folders.py").write_text(snippet)
    assert commands[:2] == ["python make_folders.py", "qrel init timm:test_vit photos --random-init"]
    runpy.run_path(str(pytester.path / "make_folders.py"))
    assert qrel_main(shlex.split(commands[1])[1:]) == 0
    assert len(commands) == 5 and all(c.startswith("pytest ") for c in commands[2:])
    results = []
    for command in commands[2:]:
        results.append(pytester.runpytest(*shlex.split(command)[1:]))
        assert results[-1].ret == 0, results[-1].stdout.str()
    baseline, audit, pasted = results
    baseline.stdout.fnmatch_lines(["*model 'test_vit' has random weights*is at chance level, as a dry run's is*"])
    audit.stdout.fnmatch_lines(["*photos: 3 checks: 3 passed*"])
    assert (pytester.path / "reports/photos.html").is_file()
    assert pasted.parseoutcomes() == {"passed": 1}


def test_init_checks_the_model_before_writing_anything(tmp_path, monkeypatch, capsys):
    """A misspelled MODEL is one line naming it, with "did you mean", and no file: the re-run with
    the fix must not meet "already exists" (it did: the loader failed after the write)."""
    for cls in ("cat", "dog"):
        _jpegs(tmp_path / "pets" / cls)
    monkeypatch.chdir(tmp_path)
    for model, message in [
        ("timmm:test_vit", "MODEL timmm:test_vit: unknown model source 'timmm'; did you mean 'timm'?"),
        ("tset_vit", "MODEL tset_vit: timm model 'tset_vit': unknown timm model 'tset_vit'; did you mean 'test_vit'?"),
        ("embedded:digts_vit", "MODEL embedded:digts_vit: unknown embedded model 'digts_vit'; did you mean 'digits_vit'?"),
    ]:
        assert qrel_main(["init", model, "pets", "--random-init"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "suites/pets.yaml").exists()
    assert qrel_main(["init", "embedded:digits_vit", "pets"]) == 0  # the fixed command writes it
    assert (tmp_path / "suites/pets.yaml").is_file()


def test_init_notes_what_a_pretrained_run_would_lack(tmp_path, monkeypatch, capsys):
    """Without --random-init / --checkpoint, the first run needs cached pretrained weights and
    WordNet-id folders: `qrel init` says so (and how to fix it) instead of a failing first run."""
    for cls in ("cat", "dog"):
        _jpegs(tmp_path / "pets" / cls)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert qrel_main(["init", "test_vit", "pets"]) == 0
    out = capsys.readouterr().out
    assert ("note: the pretrained weights of timm/test_vit.r160_in1k are not in the local Hugging Face cache "
            f"({tmp_path / 'empty-cache'}); fetch them on a machine with internet access with "
            "`hf download timm/test_vit.r160_in1k model.safetensors`; or write the suite again with --checkpoint") in out
    assert "note: your class folders (cat, dog) are not ImageNet WordNet ids" in out
    assert qrel_main(["init", "test_vit", "pets", "--random-init", "--out", "dry.yaml"]) == 0
    assert "note:" not in capsys.readouterr().out  # a dry run lacks nothing


def test_qrel_command_line_help_version_and_typos(capsys):
    with pytest.raises(SystemExit) as stop:
        qrel_main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"pytest-qrel {__version__}"
    with pytest.raises(SystemExit):
        qrel_main(["--help"])
    out = capsys.readouterr().out
    assert "{init,merge}" in out and "qrel init timm:test_vit photos --random-init" in out  # the first steps
    for argv, usage, message in [
        (["int", "x", "y"], "usage: qrel [-h]", "qrel: error: unknown command 'int'; did you mean 'init'? (known: init, merge)"),
        (["init", "x", "y", "--random-int"], "usage: qrel init", "qrel init: error: unknown option '--random-int'; did you mean '--random-init'?"),
        (["merge", "a.json", "--reprot", "r.html"], "usage: qrel merge", "qrel merge: error: unknown option '--reprot'; did you mean '--report'?"),
        (["init", "x", "y", "z"], "usage: qrel init", "qrel init: error: unexpected argument 'z' (see: qrel init --help)"),
    ]:
        with pytest.raises(SystemExit) as stop:
            qrel_main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.startswith(usage) and message in err, err


def test_init_with_spaces_in_the_folder_prints_commands_that_paste(tmp_path, monkeypatch, capsys):
    """A folder named `my photos`: the default suite file has no space (its name starts every node
    id), and a given --out with spaces is shell-quoted in the printed next steps."""
    for cls in ("cat", "dog"):
        _jpegs(tmp_path / "my photos" / cls)
    monkeypatch.chdir(tmp_path)
    assert qrel_main(["init", "embedded:digits_vit", "my photos"]) == 0
    out = capsys.readouterr().out
    assert "wrote suites/my_photos.yaml (2 classes; class folders without splits" in out
    assert "  pytest --qrel-suite suites/my_photos.yaml --qrel-report reports/my_photos.html" in out.splitlines()
    assert qrel_main(["init", "embedded:digits_vit", "my photos", "--out", "my suites/a b.yaml"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert shlex.split(lines[-1]) == ["pytest", "--qrel-suite", "my suites/a b.yaml", "--qrel-report", "reports/a_b.html"]
    assert load_suite(tmp_path / "my suites/a b.yaml").id_dataset.source == "imagefolder:../my photos"


def test_init_with_the_shipped_clip_writes_a_dry_run_that_passes(tmp_path, monkeypatch, capsys):
    """The shipped demo CLIP has no words for 'cat' / 'dog' (the run refuses such names): `qrel init`
    builds its head from the CLIP's own class names, one per folder, with loose bounds and MCM, says
    so, and the suite it writes passes; folders named by its words keep their names; more folders
    than it has names is one line naming MODEL."""
    from pytest_qrel import Engine, run

    for split in ("train", "val", "test"):
        for cls in ("cat", "dog"):
            _jpegs(tmp_path / "pets" / split / cls, 4)
    monkeypatch.chdir(tmp_path)
    assert qrel_main(["init", "open_clip:digits_clip", "pets"]) == 0
    assert "note: the shipped demo CLIP has no words for your class folders" in capsys.readouterr().out
    suite = load_suite(tmp_path / "suites/pets.yaml")
    assert suite.id_dataset.options["class_names"] == ["zero", "one"] and list(suite.scores) == ["msp", "mcm"]
    assert [c.bound.amount for c in suite.checks] == [25, 25, 25]  # a dry run's loose bounds
    verdicts = run(suite, engine=Engine(baseline_dir=tmp_path / "baselines", update_baselines=True))
    assert [v.outcome for v in verdicts] == ["passed"] * 3
    for cls in ("zero", "one"):
        _jpegs(tmp_path / "digits" / cls)
    assert qrel_main(["init", "open_clip:digits_clip", "digits"]) == 0
    assert "class_names" not in (tmp_path / "suites/digits.yaml").read_text()
    for i in range(9):  # the shipped CLIP was trained on the digits 0-7
        _jpegs(tmp_path / "many" / f"c{i}", 1)
    assert qrel_main(["init", "open_clip:digits_clip", "many"]) == 2
    assert "MODEL open_clip:digits_clip: the shipped demo CLIP knows the names of 8 classes" in capsys.readouterr().err
    assert not (tmp_path / "suites/many.yaml").exists()
