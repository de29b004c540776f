"""The bad-input corpus, part 1: suite files. Every case is one edit of a valid suite and the
*exact* one-line message :func:`pytest_qrel.load_suite` raises (a :class:`SpecError`), so a
changed wording is a deliberate decision. A handful of cases also run end to end through pytest:
one error line, no traceback, a non-zero exit.

Parts 2 and 3: tests/test_bad_input_sources.py (data and model sources) and
tests/test_bad_input_numbers.py (NaN / Inf, labels, class order, OOD sizes, chance level).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_qrel import load_suite
from pytest_qrel.errors import QrelError, SpecError

BASE = """\
version: 1
name: mini
models:
  vit: {source: "embedded:digits_vit"}
datasets:
  id: {name: digits, source: "embedded:digits"}
  ood:
    - {name: digits89, source: "embedded:digits89"}
    - {name: noise, source: "embedded:noise"}
quantizers:
  W8A8: {method: minmax, weight_bits: 8, act_bits: 8}
  W4A4: {method: minmax}
scores: [msp, energy]
checks:
  - "W8A8 top1 delta <= 1pp"
  - "W4A4 aupr_out(msp) on mean(ood) delta <= 50%"
"""

CHECK_HELP = (
    "write '<quantizers> <metric>[(<score>)] [on <datasets>] [delta|value] <op> <number>[%|pp] [with <c>% confidence]', "
    "e.g. 'W4A4 aupr_out(msp) on mean(ood) delta <= 12%'"
)
NO_TAG = "(fix: remove the tag: a suite holds only plain mappings, lists, strings and numbers)"
MODEL_SOURCES = "(known: embedded, open_clip, python, timm)"
DATASET_SOURCES = "(known: embedded, filelist, imagefolder, imagetext, shift, torchvision)"
EMBEDDED_SETS = "(known: digits, digits89, noise, photos, textures)"
TOP_LEVEL = "batch_size, bootstrap, checks, confidence, conventions, datasets, description, diagnostics, inconclusive, models, name, quantizers, references, report, scenarios, scores, version"
KEY_FIX = " (fix: remove it or use a known key)"
ONE_CHECK = """(fix: add at least one check, e.g. '- "W8A8 top1 delta <= 1pp"')"""
NOT_OVERLAP = "(fix: remove one of them, or narrow 'all' / 'on' so that they do not overlap)"


ALIAS_BOMB = "description:\n" + "\n".join(  # 9 levels of 9 aliases: 9^9 values once expanded, a few hundred bytes written
    ["  a: &a [" + ", ".join(['"lol"'] * 9) + "]"] + [f"  {c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi")]
)
TOO_DEEP = "(fix: a suite nests a few levels: flatten the value)"
SHORTEN = "(fix: shorten it to at most 100 characters: names become file names under baselines/)"


def edit(old: str, new: str) -> tuple[str, str]:
    assert old in BASE, old
    return (old, new)


CHECK_LINE = '  - "W8A8 top1 delta <= 1pp"\n'


def check(text: str) -> tuple[str, str]:
    """Replace the first check (line 15) by ``text`` (one YAML list item, written as is)."""
    return edit(CHECK_LINE, f"  - {text}\n")


# (id, (old, new) edit of BASE or a whole file, exact message with {p} for the suite's path)
SPEC_CASES: list[tuple[str, tuple[str, str] | str, str]] = [
    # ---- the file and its YAML
    ("empty file", "", "{p}: the suite file is empty (fix: see the README for a complete example)"),
    ("only a comment", "# nothing here\n", "{p}: the suite file is empty (fix: see the README for a complete example)"),
    ("top-level list", "- models\n- datasets\n",
     "{p}:1: expected a mapping, got a list (fix: a suite is a mapping with models, datasets, quantizers, scores and checks)"),
    ("top-level string", "hello\n",
     "{p}: expected a mapping, got a string (fix: a suite is a mapping with models, datasets, quantizers, scores and checks)"),
    ("unclosed bracket", edit('  vit: {source: "embedded:digits_vit"}', '  vit: {source: ["embedded:digits_vit"}'),
     "{p}:4: invalid YAML: expected ',' or ']', but got '}' (fix: fix the YAML syntax)"),
    ("tab indentation", edit("  W4A4: {method: minmax}", "\tW4A4: {method: minmax}"),
     "{p}:12: invalid YAML: found character '\\t' that cannot start any token (fix: fix the YAML syntax)"),
    ("duplicate top-level key", edit("scores: [msp, energy]", "scores: [msp]\nscores: [energy]"),
     "{p}:14: duplicate key 'scores' (fix: remove or rename one of them)"),
    ("duplicate model", edit('  vit: {source: "embedded:digits_vit"}', '  vit: {source: "embedded:digits_vit"}\n  vit: {source: "embedded:digits_vit"}'),
     "{p}:5: duplicate key 'vit' (fix: remove or rename one of them)"),
    ("python object tag", check('!!python/object/apply:os.system ["echo hi"]'),
     f"{{p}}:15: YAML tag '!!python/object/apply:os.system' is not allowed {NO_TAG}"),
    ("python name tag", edit("name: mini", "name: !!python/name:os.system"),
     f"{{p}}:2: YAML tag '!!python/name:os.system' is not allowed {NO_TAG}"),
    ("set tag", edit("scores: [msp, energy]", "scores: !!set {msp: null}"), f"{{p}}:13: YAML tag '!!set' is not allowed {NO_TAG}"),
    ("binary tag", edit("name: mini", "name: !!binary bWluaQ=="), f"{{p}}:2: YAML tag '!!binary' is not allowed {NO_TAG}"),
    ("custom tag", edit('source: "embedded:noise"', '!env source: "embedded:noise"'), f"{{p}}:9: YAML tag '!env' is not allowed {NO_TAG}"),
    ("merge key", edit("  W4A4: {method: minmax}", "  W4A4: {<<: {method: minmax}}"),
     "{p}:12: YAML merge keys ('<<') are not supported (fix: write the keys out in each mapping)"),
    ("list as a key", edit("scores: [msp, energy]", "? [msp, energy]\n: 1"), "{p}:13: mapping keys must be plain scalars"),
    # ---- top-level fields
    ("misspelled top-level key", edit("name: mini", "nmae: mini"), f"{{p}}:2: field 'nmae': unknown key 'nmae'; did you mean 'name'? (known: {TOP_LEVEL}){KEY_FIX}"),
    ("unknown top-level key", edit("name: mini", "name: mini\nowner: me"),
     f"{{p}}:3: field 'owner': unknown key 'owner' (known: {TOP_LEVEL}){KEY_FIX}"),
    ("schema version 2", edit("version: 1", "version: 2"), "{p}:1: field 'version': unsupported schema version 2 (fix: this pytest-qrel reads version 1)"),
    ("name with a space", edit("name: mini", "name: my suite"), "{p}:2: field 'name': invalid name 'my suite' (fix: use only letters, digits, _ . and -)"),
    ("name '..'", edit("name: mini", "name: .."), "{p}:2: field 'name': invalid name '..' (fix: start it with a letter, a digit or _)"),
    ("name a number", edit("name: mini", "name: 7"), "{p}:2: field 'name': invalid name 7 (fix: use only letters, digits, _ . and -)"),
    ("misspelled convention", edit("name: mini", "name: mini\nconventions: openod"),
     "{p}:3: field 'conventions': unknown metric convention 'openod'; did you mean 'openood'? (known: hendrycks, mcm_code, openood) (fix: use one of hendrycks, mcm_code, openood)"),
    ("batch size 0", edit("name: mini", "name: mini\nbatch_size: 0"), "{p}:3: field 'batch_size': key 'batch_size' must be an integer >= 1, got 0 (fix: use an integer >= 1)"),
    ("batch size a string", edit("name: mini", "name: mini\nbatch_size: many"), "{p}:3: field 'batch_size': key 'batch_size' must be an integer >= 1, got 'many' (fix: use an integer >= 1)"),
    # ---- models
    ("no models", edit('models:\n  vit: {source: "embedded:digits_vit"}\n', ""), "{p}:1: field 'models': missing 'models' (fix: see the README for a complete example)"),
    ("models a list", edit('  vit: {source: "embedded:digits_vit"}', '  - {source: "embedded:digits_vit"}'),
     "{p}:4: field 'models': expected a mapping, got a list (fix: write e.g. 'models: {vit_digits: {source: embedded:digits_vit}}')"),
    ("models empty", edit('models:\n  vit: {source: "embedded:digits_vit"}', "models: {}"),
     "{p}:3: field 'models': no models given (fix: name at least one model)"),
    ("model without source", edit('  vit: {source: "embedded:digits_vit"}', "  vit: {options: {}}"),
     "{p}:4: field 'models.vit.source': missing 'source' (fix: add e.g. 'source: embedded:digits_vit')"),
    ("model key misspelled", edit('  vit: {source: "embedded:digits_vit"}', '  vit: {sourc: "embedded:digits_vit"}'),
     f"{{p}}:4: field 'models.vit.sourc': unknown key 'sourc'; did you mean 'source'? (known: options, source){KEY_FIX}"),
    ("model source without scheme", edit('"embedded:digits_vit"', '"digits_vit"'),
     "{p}:4: field 'models.vit.source': source must be '<scheme>:<arg>', got 'digits_vit' (fix: write e.g. 'embedded:digits' or 'timm:deit_small_patch16_224')"),
    ("model scheme timmm", edit('"embedded:digits_vit"', '"timmm:deit_small_patch16_224"'),
     f"{{p}}:4: field 'models.vit.source': unknown model source 'timmm'; did you mean 'timm'? {MODEL_SOURCES}"),
    ("model scheme embeded", edit('"embedded:digits_vit"', '"embeded:digits_vit"'),
     f"{{p}}:4: field 'models.vit.source': unknown model source 'embeded'; did you mean 'embedded'? {MODEL_SOURCES}"),
    ("embedded model misspelled", edit('"embedded:digits_vit"', '"embedded:digits_vt"'),
     "{p}:4: field 'models.vit.source': unknown embedded model 'digits_vt'; did you mean 'digits_vit'? (known: digits_vit)"),
    ("shipped CLIP under embedded", edit('"embedded:digits_vit"', '"embedded:digits_clip"'),
     "{p}:4: field 'models.vit.source': 'digits_clip' is the shipped CLIP model, which the open_clip source loads: write 'open_clip:digits_clip'"),
    ("embedded model with options", edit('  vit: {source: "embedded:digits_vit"}', '  vit: {source: "embedded:digits_vit", options: {seed: 1}}'),
     "{p}:4: field 'models.vit.options': model 'embedded:digits_vit': unknown option 'seed' (known: none)"),
    ("model options a list", edit('  vit: {source: "embedded:digits_vit"}', '  vit: {source: "embedded:digits_vit", options: [seed]}'),
     "{p}:4: field 'models.vit.options': 'options' must be a mapping"),
    ("python source without factory", edit('"embedded:digits_vit"', '"python:models/build.py"'),
     "{p}:4: field 'models.vit.source': model 'python:models/build.py': expected 'python:<module>:<factory>' "
     "(e.g. 'python:mypkg.models:build' or 'python:models/build.py:make_model')"),
    ("timm option misspelled", edit('  vit: {source: "embedded:digits_vit"}', '  vit: {source: "timm:deit_tiny_patch16_224", options: {pretrainde: false}}'),
     "{p}:4: field 'models.vit.options': timm model 'deit_tiny_patch16_224': unknown option 'pretrainde'; did you mean 'pretrained'? "
     "(known: cache_dir, checkpoint, data_config, model_kwargs, num_classes, pretrained, seed)"),
    ("timm options contradict", edit('  vit: {source: "embedded:digits_vit"}', '  vit: {source: "timm:deit_tiny_patch16_224", options: {pretrained: false, checkpoint: w.safetensors}}'),
     "{p}:4: field 'models.vit.options': timm model 'deit_tiny_patch16_224': options 'pretrained: false' and 'checkpoint' contradict each other "
     "(drop 'pretrained: false' to load the checkpoint, or drop 'checkpoint' for random weights)"),
    # ---- datasets
    ("no datasets", edit('datasets:\n  id: {name: digits, source: "embedded:digits"}\n  ood:\n    - {name: digits89, source: "embedded:digits89"}\n    - {name: noise, source: "embedded:noise"}\n', ""),
     "{p}:1: field 'datasets': missing 'datasets' (fix: see the README for a complete example)"),
    ("no id set", edit('  id: {name: digits, source: "embedded:digits"}\n', ""),
     "{p}:6: field 'datasets.id': missing the in-distribution set 'id' (fix: add 'id: {name: ..., source: ...}')"),
    ("datasets key misspelled", edit("  ood:", "  oods:"), f"{{p}}:7: field 'datasets.oods': unknown key 'oods'; did you mean 'ood'? (known: id, ood, pairs, shifted){KEY_FIX}"),
    ("id set misspelled", edit('"embedded:digits"', '"embedded:digts"'),
     f"{{p}}:6: field 'datasets.id.source': unknown embedded dataset 'digts'; did you mean 'digits'? {EMBEDDED_SETS}"),
    ("dataset scheme misspelled", edit('"embedded:noise"', '"embeded:noise"'),
     f"{{p}}:9: field 'datasets.ood[1].source': unknown dataset source 'embeded'; did you mean 'embedded'? {DATASET_SOURCES}"),
    ("dataset scheme unknown", edit('"embedded:noise"', '"hf:imagenet-o"'),
     f"{{p}}:9: field 'datasets.ood[1].source': unknown dataset source 'hf' {DATASET_SOURCES}"),
    ("embedded set with options", edit('{name: noise, source: "embedded:noise"}', '{name: noise, source: "embedded:noise", options: {limit: 10}}'),
     "{p}:9: field 'datasets.ood[1].options': dataset 'embedded:noise': unknown option 'limit' (known: none)"),
    ("dataset without name", edit("{name: noise, ", "{"), "{p}:9: field 'datasets.ood[1].name': missing 'name' (fix: add e.g. 'name: textures')"),
    ("dataset name with '-'", edit("name: noise", "name: no-ise"), "{p}:9: field 'datasets.ood[1].name': invalid name 'no-ise' (fix: use only letters, digits, _ and .)"),
    ("dataset name reserved", edit("name: noise", "name: mean"),
     "{p}:9: field 'datasets.ood': dataset name 'mean' is used twice or reserved (fix: give each dataset a unique name)"),
    ("dataset name twice", edit("name: noise", "name: digits89"),
     "{p}:9: field 'datasets.ood': dataset name 'digits89' is used twice or reserved (fix: give each dataset a unique name)"),
    ("ood a string", edit('  ood:\n    - {name: digits89, source: "embedded:digits89"}\n    - {name: noise, source: "embedded:noise"}', '  ood: "embedded:noise"'),
     "{p}:7: field 'datasets.ood': 'ood' must be a list or a mapping, got a string"),
    ("imagefolder option misspelled", edit('{name: noise, source: "embedded:noise"}', '{name: noise, source: "imagefolder:data/noise", options: {limt: 10}}'),
     "{p}:9: field 'datasets.ood[1].options': dataset 'imagefolder:data/noise': unknown option 'limt'; did you mean 'limit'? "
     "(known: class_index, class_names, classes, content_hash, extensions, labels, limit, logit_mask, mode, seed, split_dirs, test, train, unknown_classes, val)"),
    ("imagefolder bad labels", edit('{name: noise, source: "embedded:noise"}', '{name: noise, source: "imagefolder:data/noise", options: {labels: maybe}}'),
     "{p}:9: field 'datasets.ood[1].options': dataset 'imagefolder:data/noise': option 'labels' must be one of 'auto', 'folders', 'none', got 'maybe'"),
    ("imagefolder limit 0", edit('{name: noise, source: "embedded:noise"}', '{name: noise, source: "imagefolder:data/noise", options: {limit: 0}}'),
     "{p}:9: field 'datasets.ood[1].options': dataset 'imagefolder:data/noise': option 'limit' must be an integer >= 1, got 0"),
    ("imagefolder classes and class_index", edit('{name: noise, source: "embedded:noise"}', '{name: noise, source: "imagefolder:d", options: {classes: [a], class_index: {a: 0}}}'),
     "{p}:9: field 'datasets.ood[1].options': dataset 'imagefolder:d': give either 'classes' (names in index order) or 'class_index' (name -> index), not both"),
    ("filelist option unknown", edit('{name: noise, source: "embedded:noise"}', '{name: noise, source: "filelist:ood.txt", options: {extensions: [.png]}}'),
     "{p}:9: field 'datasets.ood[1].options': dataset 'filelist:ood.txt': unknown option 'extensions' "
     "(known: class_names, classes, content_hash, labels, limit, mode, root, seed, test, train, val)"),
    ("shift corruption misspelled", edit('{name: noise, source: "embedded:noise"}', '{name: noise, source: "shift:gausian_noise/3", options: {of: "embedded:digits"}}'),
     "{p}:9: field 'datasets.ood[1].source': unknown corruption 'gausian_noise'; did you mean 'gaussian_noise'? (known: {corruptions})"),
    ("shift severity 6", edit('{name: noise, source: "embedded:noise"}', '{name: noise, source: "shift:gaussian_noise/6", options: {of: "embedded:digits"}}'),
     "{p}:9: field 'datasets.ood[1].source': dataset 'shift:gaussian_noise/6': severity must be an integer from 1 to 5, got '6'"),
    ("shift without of", edit('{name: noise, source: "embedded:noise"}', '{name: noise, source: "shift:gaussian_noise/3"}'),
     "{p}:9: field 'datasets.ood[1].options': dataset 'shift:gaussian_noise/3': option 'of' is required: the source of the clean set, e.g. {of: \"embedded:digits\"}"),
    ("shift of a misspelled set", edit('{name: noise, source: "embedded:noise"}', '{name: noise, source: "shift:gaussian_noise/3", options: {of: "embedded:digts", as_ood: true}}'),
     f"{{p}}:9: field 'datasets.ood[1].options': dataset 'shift:gaussian_noise/3': base set 'embedded:digts': unknown embedded dataset 'digts'; did you mean 'digits'? {EMBEDDED_SETS}"),
    ("shift of_options bad", edit('{name: noise, source: "embedded:noise"}', '{name: noise, source: "shift:gaussian_noise/3", options: {of: "imagefolder:x", of_options: {labels: maybe}}}'),
     "{p}:9: field 'datasets.ood[1].options': dataset 'shift:gaussian_noise/3': base set 'imagefolder:x': option 'labels' must be one of 'auto', 'folders', 'none', got 'maybe'"),
    ("pair of an OOD set", edit("  ood:", "  pairs: {bg: {common: digits, counter: noise}}\n  ood:"),
     "{p}:7: field 'datasets.pairs.bg.counter': 'counter' must name the ID set or a shifted set, got 'noise' (fix: use one of digits)"),
    # ---- quantizers (method and option names are validated by the quantizer registry's own checks)
    ("quantizer named FP32", edit("  W4A4: {method: minmax}", "  FP32: {method: minmax}"),
     "{p}:12: field 'quantizers.FP32': 'FP32' is reserved for the unquantized reference (fix: remove it: FP32 is always part of a suite)"),
    ("weight bits 9", edit("  W4A4: {method: minmax}", "  W4A4: {method: minmax, weight_bits: 9}"),
     "{p}:12: field 'quantizers.W4A4.weight_bits': key 'weight_bits' must be an integer from 2 to 8, got 9 (fix: use an integer from 2 to 8)"),
    # ---- scores
    ("score misspelled", edit("scores: [msp, energy]", "scores: [msp, enrgy]"),
     "{p}:13: field 'scores[1]': unknown score 'enrgy'; did you mean 'energy'? (known: {scores}) (fix: use one of the known scores)"),
    ("scores a number", edit("scores: [msp, energy]", "scores: 5"),
     "{p}:13: field 'scores': 'scores' must be a list of score names (fix: write e.g. 'scores: [msp, energy]')"),
    # ---- the checks list
    ("checks empty", edit('checks:\n  - "W8A8 top1 delta <= 1pp"\n  - "W4A4 aupr_out(msp) on mean(ood) delta <= 50%"\n', "checks: []\n"),
     f"{{p}}:14: field 'checks': 'checks' is empty: the suite would verify nothing {ONE_CHECK}"),
    ("checks missing", edit('checks:\n  - "W8A8 top1 delta <= 1pp"\n  - "W4A4 aupr_out(msp) on mean(ood) delta <= 50%"\n', ""),
     f"{{p}}:1: field 'checks': the suite has no checks {ONE_CHECK}"),
    ("checks null", edit('checks:\n  - "W8A8 top1 delta <= 1pp"\n  - "W4A4 aupr_out(msp) on mean(ood) delta <= 50%"\n', "checks:\n"),
     f"{{p}}:14: field 'checks': the suite has no checks {ONE_CHECK}"),
    ("checks a string", edit('checks:\n  - "W8A8 top1 delta <= 1pp"\n  - "W4A4 aupr_out(msp) on mean(ood) delta <= 50%"\n', 'checks: "W8A8 top1 delta <= 1pp"\n'),
     "{p}:14: field 'checks': 'checks' must be a list, got a string (fix: start each check with '- ')"),
    ("a check written twice", edit(CHECK_LINE, CHECK_LINE + '  - "W8A8 top1 delta<=1pp"\n'),
     f"{{p}}:16: field 'checks[1]': repeats checks[0] (line 15): both check W8A8 top1 delta<=1pp on digits {NOT_OVERLAP}"),
    ("'all' overlaps a named quantizer", edit(CHECK_LINE, '  - "all ece <= 0.1"\n  - "FP32 ece <= 0.1"\n'),
     f"{{p}}:16: field 'checks[1]': repeats checks[0] (line 15): both check FP32 ece value<=0.1 on digits {NOT_OVERLAP}"),
    ("a score-less OOD check overlaps", edit(CHECK_LINE, '  - "W4A4 auroc on noise delta <= 5%"\n  - "W4A4 auroc(energy) on noise delta <= 5%"\n'),
     f"{{p}}:16: field 'checks[1]': repeats checks[0] (line 15): both check W4A4 auroc(energy) delta<=5% on noise {NOT_OVERLAP}"),
    ("a quantizer named twice", check('"W8A8,W8A8 top1 delta <= 1pp"'),
     "{p}:15: field 'checks[0]': gives W8A8 top1 delta<=1pp on digits twice (fix: name each quantizer and dataset once)"),
    ("a check that is a list", check("[W8A8, top1]"), f"{{p}}:15: field 'checks[0]': a check must be a string or a mapping, got a list (fix: {CHECK_HELP})"),
    ("a check that is a number", check("3"), f"{{p}}:15: field 'checks[0]': a check must be a string or a mapping, got a number (fix: {CHECK_HELP})"),
    # ---- one check
    ("check syntax", check('"W8A8 top1 <== 1pp"'), f"{{p}}:15: field 'checks[0]': cannot parse check 'W8A8 top1 <== 1pp' (fix: {CHECK_HELP})"),
    ("check without quantizer", check('"top1 delta <= 1pp"'), "{p}:15: field 'checks[0]': check 'top1 delta <= 1pp' names no quantizer before the metric 'top1' (fix: write e.g. 'all top1 delta <= 1pp' or name quantizers such as 'W8A8')"),
    ("metric misspelled", check('"W8A8 top2 delta <= 1pp"'),
     "{p}:15: field 'checks[0]': unknown metric 'top2'; did you mean 'top1'? (known: {metrics}) (fix: use one of the known metrics)"),
    ("quantizer unknown", check('"W9A9 top1 delta <= 1pp"'),
     "{p}:15: field 'checks[0]': unknown quantizer 'W9A9' (known: FP32, W8A8, W4A4) (fix: define it under 'quantizers:' or use 'all')"),
    ("post-hoc step misspelled", check('"W8A8+temprature ece delta <= 0"'),
     "{p}:15: field 'checks[0]': unknown post-hoc step 'temprature'; did you mean 'temperature'? (known: temperature) (fix: write e.g. 'W8A8+temperature')"),
    ("score misspelled in a check", check('"W8A8 auroc(msq) delta <= 1pp"'),
     "{p}:15: field 'checks[0]': unknown score 'msq'; did you mean 'msp'? (known: msp, energy) (fix: add it to 'scores:' or pick a listed one)"),
    ("score on an ID metric", check('"W8A8 top1(msp) delta <= 1pp"'),
     "{p}:15: field 'checks[0]': top1 is not an OOD metric and takes no score (fix: write 'top1' without '(msp)')"),
    ("pp on nll", check('"W8A8 nll delta <= 1pp"'),
     "{p}:15: field 'checks[0]': 'pp' (percentage points) needs a metric in [0, 1]; nll is not one (fix: use % (relative) or an absolute number)"),
    ("pp on a value bound", check('"W8A8 top1 value >= 90pp"'),
     "{p}:15: field 'checks[0]': 'pp' applies to deltas; a value bound takes a plain number or % (fix: write e.g. 'value >= 90%')"),
    ("delta on FP32", check('"FP32 top1 delta <= 1pp"'),
     "{p}:15: field 'checks[0]': a delta check on FP32 compares FP32 with itself (fix: use a value bound for FP32, or name a quantizer)"),
    ("delta floored", check('"W8A8 top1 delta >= 1pp"'),
     "{p}:15: field 'checks[0]': a delta bound must be '<=' or '<' a non-negative amount (fix: write e.g. 'delta <= 5%' ('delta <= 0' means: must not worsen))"),
    ("delta compared with itself", check('"W8A8 top1 delta <= delta(W8A8)"'),
     "{p}:15: field 'checks[0]': the check compares W8A8 with itself (fix: name a different quantizer inside delta(...))"),
    ("'all' with names", check('"all,W8A8 top1 >= 0.5"'),
     "{p}:15: field 'checks[0]': 'all' cannot be combined with other quantizer names (fix: write either 'all' or a list of names)"),
    ("OOD set unknown", check('"W8A8 aupr_out(msp) on textures delta <= 1pp"'),
     "{p}:15: field 'checks[0]': unknown OOD dataset 'textures' (known: digits89, noise, mean(ood)) (fix: name a set listed under 'datasets: ood:')"),
    ("ID metric on an OOD set", check('"W8A8 top1 on noise delta <= 1pp"'),
     "{p}:15: field 'checks[0]': top1 is measured on labelled sets (digits), not 'noise' (fix: name the ID set or a set under 'datasets: shifted:', or drop 'on ...')"),
    ("mean of nothing", check('"W4A4 auroc(msp) on mean() delta <= 5%"'),
     "{p}:15: field 'checks[0]': 'mean()' averages over no dataset (fix: write mean(ood) or mean(<set>,<set>))"),
    ("spectral metric with a delta", check('"W4A4 spectral_error delta <= 5%"'),
     "{p}:15: field 'checks[0]': spectral_error already measures the distance from FP32 (0 for FP32 itself), so it takes a value bound, not a delta bound "
     "(fix: write e.g. 'W4A4 spectral_error <= 0.25')"),
    ("pair metric without pairs", check('"W4A4 vulnerability <= 0.1"'),
     "{p}:15: field 'checks[0]': vulnerability compares a pair of sets but the suite has no 'datasets: pairs:' (fix: add e.g. 'pairs: {bg: {common: <set>, counter: <set>}}')"),
    ("structured without metric", check("{quantizers: W8A8, delta: {max: 1pp}}"),
     "{p}:15: field 'checks[0]': a structured check needs 'metric' (a metric name) (fix: add e.g. 'metric: nll')"),
    ("structured without bound", check("{metric: nll}"),
     "{p}:15: field 'checks[0]': a structured check needs exactly one of 'delta' or 'value' (fix: add e.g. 'delta: {max: 10%}')"),
    ("structured bound key", check("{metric: nll, delta: {maximum: 3}}"),
     "{p}:15: field 'checks[0].delta': 'delta' must be a mapping with exactly one of max/min/lt/gt, got {'maximum': 3} (fix: write e.g. 'delta: {max: 10%}')"),
    ("structured bound not a number", check("{metric: nll, delta: {max: lots}}"),
     "{p}:15: field 'checks[0].delta': bound 'lots' is not a number with an optional % or pp (fix: write e.g. 10%, 1pp or 0.05)"),
    ("structured key misspelled", check("{metric: nll, delta: {max: 3}, reasn: known}"),
     f"{{p}}:15: field 'checks[0]': unknown key 'reasn'; did you mean 'reason'? (known: check, confidence, datasets, delta, expect, metric, on, quantizers, reason, score, value){KEY_FIX}"),
    ("expect maybe", check("{metric: nll, quantizers: W8A8, delta: {max: 3}, expect: maybe}"),
     "{p}:15: field 'checks[0].expect': 'expect' must be 'pass' or 'fail', got 'maybe' (fix: write 'expect: fail' for a check known to fail)"),
    ("shorthand plus structured", check('{check: "W8A8 nll delta <= 3", metric: nll}'),
     "{p}:15: field 'checks[0]': 'check' shorthand cannot be combined with metric (fix: put everything in the shorthand or use the structured keys only)"),
    # ---- inputs that crash or exhaust: bounded before anything is expanded, one line each
    ("an alias bomb", edit("name: mini", "name: mini\n" + ALIAS_BOMB),
     "{p}:9: this value expands to 597,871 values through the file's 72 aliases (*name), more than the 100,000 a suite may hold "
     "(fix: write the values out instead of nesting aliases)"),
    ("a recursive alias", edit("name: mini", "name: mini\ndescription: &d [1, *d]"),
     "{p}:3: an alias (*name) refers to the value it is part of, which would never end (fix: point the alias at a value outside its own anchor)"),
    ("a description nested 5,000 deep", edit("name: mini", "name: mini\ndescription: " + "[" * 5000 + "]" * 5000),
     f"{{p}}:3: the YAML nests mappings or lists more than 64 levels deep {TOO_DEEP}"),
    ("mappings nested 70 deep", edit("name: mini", "name: mini\ndescription:\n" + "".join("  " * (i + 1) + "a:\n" for i in range(70))),
     f"{{p}}:66: the YAML nests mappings or lists more than 64 levels deep {TOO_DEEP}"),
    # ---- names become file names: the whole name is matched (no trailing newline), and it is short
    ("suite name ending in a newline", edit("name: mini", 'name: "mini\\n"'),
     "{p}:2: field 'name': invalid name 'mini\\n' (fix: use only letters, digits, _ . and -)"),
    ("model name ending in a newline", edit('  vit: {source: "embedded:digits_vit"}', '  "vit\\n": {source: "embedded:digits_vit"}'),
     "{p}:4: field 'models.vit\\n': invalid name 'vit\\n' (fix: use only letters, digits, _ . and -)"),
    ("dataset name ending in a newline", edit("name: noise", 'name: "noise\\n"'),
     "{p}:9: field 'datasets.ood[1].name': invalid name 'noise\\n' (fix: use only letters, digits, _ and .)"),
    ("quantizer name ending in a newline", edit("  W4A4: {method: minmax}", '  "W4A4\\n": {method: minmax}'),
     "{p}:12: field 'quantizers.W4A4\\n': invalid name 'W4A4\\n' (fix: use only letters, digits, _ . and -)"),
    ("model name of 300 characters", edit('  vit: {source: "embedded:digits_vit"}', "  " + "v" * 300 + ': {source: "embedded:digits_vit"}'),
     f"{{p}}:4: field 'models.vvvvvvvvvvvvvvvvvvvv...vvvvvvvv': name 'vvvvvvvvvvvvvvvvvvvv...vvvvvvvv' has 300 characters, more than 100 {SHORTEN}"),
    ("suite name of 101 characters", edit("name: mini", "name: " + "m" * 101),
     f"{{p}}:2: field 'name': name 'mmmmmmmmmmmmmmmmmmmm...mmmmmmmm' has 101 characters, more than 100 {SHORTEN}"),
    # ---- a boolean is never a number (True == 1 in Python)
    ("version true", edit("version: 1", "version: true"), "{p}:1: field 'version': 'version' must be a number, got True (fix: write 'version: 1')"),
    ("batch size true", edit("name: mini", "name: mini\nbatch_size: true"),
     "{p}:3: field 'batch_size': key 'batch_size' must be an integer >= 1, got True (fix: use an integer >= 1)"),
    ("confidence true", edit("name: mini", "name: mini\nconfidence: true"),
     "{p}:3: field 'confidence': confidence must be a level, got True (fix: write a fraction such as 0.95 or a percentage such as '95%')"),
    ("bootstrap resamples true", edit("name: mini", "name: mini\nbootstrap: {resamples: true}"),
     "{p}:3: field 'bootstrap.resamples': key 'resamples' must be an integer from 10 to 1000000, got True (fix: use an integer from 10 to 1000000)"),
    ("calibration samples true", edit("  W4A4: {method: minmax}", "  W4A4: {method: minmax, calibration: {samples: true}}"),
     "{p}:12: field 'quantizers.W4A4.calibration.samples': key 'samples' must be an integer >= 1, got True (fix: use an integer >= 1)"),
    ("a seed true", edit("  W4A4: {method: minmax}", "  W4A4: {method: minmax, calibration: {seeds: [0, true]}}"),
     "{p}:12: field 'quantizers.W4A4.calibration.seeds[1]': key 'seeds[1]' must be an integer >= 0, got True (fix: use an integer >= 0)"),
    ("act bits true", edit("  W4A4: {method: minmax}", "  W4A4: {method: minmax, act_bits: true}"),
     "{p}:12: field 'quantizers.W4A4.act_bits': key 'act_bits' must be an integer from 2 to 8, got True (fix: use an integer from 2 to 8)"),
    ("quantizer option true", edit("  W4A4: {method: minmax}", "  W4A4: {method: smoothquant, options: {alpha: true}}"),
     "{p}:12: field 'quantizers.W4A4.options.alpha': smoothquant option 'alpha' must be a number from 0 to 1, got True (fix: use a number from 0 to 1)"),
    ("a bound true", check("{metric: top1, quantizers: W8A8, delta: {max: true}}"),
     "{p}:15: field 'checks[0].delta': bound 'True' is not a number with an optional % or pp (fix: write e.g. 10%, 1pp or 0.05)"),
    ("dataset option limit true", edit('{name: noise, source: "embedded:noise"}', '{name: noise, source: "imagefolder:x", options: {limit: true}}'),
     "{p}:9: field 'datasets.ood[1].options': dataset 'imagefolder:x': option 'limit' must be an integer >= 1, got True"),
    ("timm num_classes true", edit('  vit: {source: "embedded:digits_vit"}', '  vit: {source: "timm:deit_tiny_patch16_224", options: {num_classes: true}}'),
     "{p}:4: field 'models.vit.options': timm model 'deit_tiny_patch16_224': option 'num_classes' must be an integer >= 1, got True"),
    ("timm data_config crop_pct true", edit('  vit: {source: "embedded:digits_vit"}', '  vit: {source: "timm:deit_tiny_patch16_224", options: {data_config: {crop_pct: true}}}'),
     "{p}:4: field 'models.vit.options': timm model 'deit_tiny_patch16_224': data_config key 'crop_pct' must be a number or a list of numbers, got True"),
]


def _expected(template: str) -> str:
    from pytest_qrel.data.shifts import CORRUPTIONS
    from pytest_qrel.metrics import METRICS
    from pytest_qrel.scores import SCORES

    return template.replace("{corruptions}", ", ".join(CORRUPTIONS.names())).replace(
        "{metrics}", ", ".join(METRICS.names())).replace("{scores}", ", ".join(SCORES.names()))


@pytest.mark.parametrize(("case", "change", "message"), SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_suite_gives_one_exact_line(tmp_path: Path, case: str, change: tuple[str, str] | str, message: str) -> None:
    text = change if isinstance(change, str) else BASE.replace(*change, 1)
    path = tmp_path / "suite.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_suite(path)
    assert str(info.value) == _expected(message).replace("{p}", str(path))
    assert "\n" not in str(info.value)


def test_the_base_suite_itself_loads(tmp_path: Path) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(BASE)
    assert len(load_suite(path).checks) == 2


def test_a_missing_or_unreadable_suite_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_suite(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: suite file does not exist (fix: check the path given to --qrel-suite)"
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(SpecError) as info:
        load_suite(path)
    assert str(info.value) == (
        f"{path}: the suite file is not UTF-8 text (byte 0xe9 at offset 9) (fix: save it as UTF-8)"
    )
    folder = tmp_path / "a_folder.yaml"
    folder.mkdir()
    with pytest.raises(SpecError) as info:
        load_suite(folder)
    assert str(info.value) == f"{folder}: cannot read suite file (Is a directory) (fix: give the path of a readable YAML file)"


# ------------------------------------------------------------------------- errors carry context


def test_with_context_keeps_the_type_and_attributes_of_every_error() -> None:
    import pickle

    from pytest_qrel import errors

    unknown = errors.UnknownNameError("embedded dataset", "digts", ["digits", "noise"])
    spec = errors.SpecError("bad", file="s.yaml", line=3, field="checks[0]", fix="do this")
    for err in (unknown, spec, errors.DataMissingError("root /x does not exist"), errors.NumericsError("NaN")):
        wrapped = err.with_context("s.yaml:6: dataset 'id'")
        assert type(wrapped) is type(err) and wrapped is not err
        assert str(wrapped) == f"s.yaml:6: dataset 'id': {err}"
        assert vars(wrapped) == vars(err)
        again = pickle.loads(pickle.dumps(wrapped))  # xdist / multiprocessing may carry errors
        assert type(again) is type(err) and str(again) == str(wrapped)
    assert unknown.with_context("x").known == ["digits", "noise"] and spec.with_context("x").line == 3
    assert isinstance(errors.NumericsError("x"), ValueError) and isinstance(errors.NumericsError("x"), QrelError)


def test_the_engine_adds_context_to_a_source_error_of_any_type(tmp_path: Path) -> None:
    # A source that fails at run time with an error whose __init__ takes other arguments than a
    # message (UnknownNameError: kind, name, known) must reach the user as that error with the
    # suite's location in front, not as "TypeError: __init__() missing 2 required positional arguments".
    from pytest_qrel import Engine
    from pytest_qrel.data import DATASET_SOURCES
    from pytest_qrel.errors import UnknownNameError

    def picky(arg, *, split, options, base_dir):
        raise UnknownNameError("torchvision dataset", arg, ["CIFAR10", "CIFAR100"])

    DATASET_SOURCES.add("corpus_picky", picky)
    try:
        path = tmp_path / "suite.yaml"
        path.write_text(BASE.replace('"embedded:noise"', '"corpus_picky:CIFAR11"'))
        suite = load_suite(path)
        with pytest.raises(UnknownNameError) as info:
            Engine(baseline_dir=tmp_path).dataset(suite, "noise")
        assert str(info.value) == (
            f"{path}:9: dataset 'noise': unknown torchvision dataset 'CIFAR11'; did you mean 'CIFAR10'? (known: CIFAR10, CIFAR100)"
        )
    finally:
        DATASET_SOURCES._entries.pop("corpus_picky", None)
        DATASET_SOURCES._meta.pop("corpus_picky", None)


# ------------------------------------------------------------------------------ through pytest

E2E = [
    ("misspelled embedded set", ('"embedded:digits"', '"embedded:digts"'), "field 'datasets.id.source': unknown embedded dataset 'digts'; did you mean 'digits'?"),
    ("misspelled scheme", ('"embedded:digits_vit"', '"timmm:deit_small_patch16_224"'), "field 'models.vit.source': unknown model source 'timmm'; did you mean 'timm'?"),
    ("no checks", ('checks:\n  - "W8A8 top1 delta <= 1pp"\n  - "W4A4 aupr_out(msp) on mean(ood) delta <= 50%"\n', "checks: []\n"),
     "field 'checks': 'checks' is empty: the suite would verify nothing"),
    ("a check written twice", (CHECK_LINE, CHECK_LINE * 2), "field 'checks[1]': repeats checks[0] (line 15)"),
    ("a python tag", (CHECK_LINE, '  - !!python/object/apply:os.system ["echo hi"]\n'), "YAML tag '!!python/object/apply:os.system' is not allowed"),
    ("an alias bomb", ("name: mini", "name: mini\n" + ALIAS_BOMB), "this value expands to 597,871 values through the file's 72 aliases"),
    ("a description nested 5,000 deep", ("name: mini", "name: mini\ndescription: " + "[" * 5000 + "]" * 5000), "the YAML nests mappings or lists more than 64"),
]


@pytest.mark.parametrize(("case", "change", "line"), E2E, ids=[c[0] for c in E2E])
def test_bad_suite_through_pytest_is_one_line_and_red(pytester: pytest.Pytester, suite_file, case: str, change: tuple[str, str],
                                                      line: str) -> None:
    suite_file(BASE.replace(*change, 1), "bad")
    result = pytester.runpytest("--qrel-suite", "suites/bad.yaml")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret != 0
    assert "Traceback" not in out and "TypeError" not in out
    matching = [ln for ln in out.splitlines() if line in ln]
    assert len(matching) == 1, out  # the message, once, on a line of its own naming the file and line
    assert matching[0].startswith("suites/bad.yaml:"), matching


def test_a_top_level_list_through_pytest(pytester: pytest.Pytester, suite_file) -> None:
    suite_file("- models\n- datasets\n", "bad")
    result = pytester.runpytest("--qrel-suite", "suites/bad.yaml")
    out = result.stdout.str()
    assert result.ret != 0 and "Traceback" not in out and "LineList" not in out
    result.stdout.fnmatch_lines(["*bad.yaml:1: expected a mapping, got a list (fix: a suite is a mapping with models, datasets, quantizers, scores and checks)*"])
