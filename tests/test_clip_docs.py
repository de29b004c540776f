"""docs/clip.md as a user pastes it: the folder snippet, the suite with two scenarios, image-text
calibration, light QAT and the CLIP scores, stored and gated (the page says it runs as written)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest
import yaml

DOC = Path(__file__).resolve().parents[1] / "docs" / "clip.md"


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.slow
def test_the_clip_page_runs_as_written(tmp_path, monkeypatch):
    from pytest_qrel import Engine, load_suite, run

    (snippet,), (suite_text, fragment), (config,) = _blocks("python"), _blocks("yaml"), _blocks("json")
    (commands,) = _blocks("console")
    assert [c.removeprefix("$ ").split()[:2] for c in commands.strip().splitlines()] == [
        ["python", "make_clip_folders.py"], ["pytest", "--qrel-suite"], ["pytest", "--qrel-suite"]]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "make_clip_folders.py").write_text(snippet)
    runpy.run_path(str(tmp_path / "make_clip_folders.py"))
    assert len(list((tmp_path / "pairs").glob("*.txt"))) == 12
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "clip_photos.yaml").write_text(suite_text)
    suite = load_suite(tmp_path / "suites" / "clip_photos.yaml")
    assert list(suite.models) == ["clip@photos", "clip@grey"]
    outcomes = {}
    for update in (True, False):  # the baselines, then the gate (from the outputs cache)
        engine = Engine(baseline_dir=tmp_path / "baselines", cache_dir=tmp_path / "cache", update_baselines=update)
        verdicts = run(suite, engine=engine)
        outcomes[update] = {v.outcome for v in verdicts}
        assert outcomes[update] == {"passed"}, [v.message for v in verdicts if v.outcome != "passed"]
    assert (tmp_path / "baselines" / "clip_photos" / "clip@grey.json").is_file()
    # the dry run of an architecture of your own: the page's config file and model entry, as written
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the default text-embedding cache
    (tmp_path / "suites" / "tiny-clip.json").write_text(config)
    models = yaml.safe_load(fragment)["models"]
    (tmp_path / "suites" / "tiny.yaml").write_text(suite_text.replace(suite_text[suite_text.index("models:"):suite_text.index("datasets:")],
                                                                      yaml.safe_dump({"models": models})))
    tiny = load_suite(tmp_path / "suites" / "tiny.yaml")
    loaded = Engine(baseline_dir=tmp_path / "baselines").model(tiny.scenarios["grey"], "tiny@grey")
    assert loaded.info["weights_from"] == "random init (seed 0)" and loaded.class_names == ["three", "four", "five"]
