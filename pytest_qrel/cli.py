"""The ``qrel`` console script: ``qrel init MODEL FOLDER`` and ``qrel merge results/*.json --report R.html``.

``qrel init timm:vit_tiny_patch16_224 data/photos --random-init`` writes a starter suite
(``suites/<folder>.yaml``) for a model and a folder of images: :mod:`pytest_qrel.init_suite`.

Merges the results files of sharded runs (``pytest --qrel-suite S --qrel-shard K/N
--qrel-results shard-K.json``) into one report. It trusts no stored outcome: the suites are read
where the merge runs and must be the files the shards ran (SHA-256), the plan comes from them,
and every verdict is recomputed from its numbers (:func:`pytest_qrel.shards.merge`). A problem
with the inputs or an output path is one line naming the file, exit code 2. Otherwise the exit
code is :meth:`pytest_qrel.policy.RunVerdict.exit_code` of the merged run, the rule pytest's exit
status follows too: 1 when any check failed, errored, did not run or was inconclusive (under the
suite's policy), or when no check was verified (every one skipped or undecided; ``--allow-skip-all``
accepts that, as ``--qrel-allow-skip-all`` does for a run), else 0. No pytest and no torch are
imported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import QrelError


_EPILOG = """\
first steps:
  qrel init timm:test_vit photos --random-init    # write suites/photos.yaml for your image folder
  pytest --qrel-suite suites/photos.yaml --qrel-update-baselines
  pytest --qrel-suite suites/photos.yaml --qrel-report reports/photos.html

Each command's options: qrel <command> --help. The audit itself runs in pytest (pytest --help | grep qrel).
"""


def _parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(prog="qrel", description="pytest-qrel command-line tools: write a starter suite, "
                                     "merge sharded runs.", epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"pytest-qrel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{init,merge}")
    init = sub.add_parser(
        "init", help="write a starter suite for a model and a folder of images",
        description="Write a starter suite for MODEL and the images in FOLDER (root/<class>/ or root/{train,val,test}/<class>/). "
                    "Paths in it are relative to the suite file. It never overwrites a file. Without --random-init or "
                    "--checkpoint, a timm model's pretrained weights must be in the local Hugging Face cache "
                    "(pytest-qrel never downloads), and the class folders must be its classes (ImageNet WordNet ids).",
        epilog="example: qrel init timm:test_vit photos --random-init")
    init.add_argument("model", help="a timm model name (timm:<name> or just <name>) or another model source (embedded:digits_vit)")
    init.add_argument("folder", type=Path, help="the folder of images: class folders, or train/val/test folders of class folders")
    init.add_argument("--out", "-o", type=Path, default=None, help="the suite file to write (default: suites/<folder name>.yaml, spaces and punctuation as _)")
    init.add_argument("--name", default=None, help="the suite's name (its baselines folder; default: the file name)")
    weights = init.add_mutually_exclusive_group()
    weights.add_argument("--random-init", action="store_true",
                         help="random weights (pretrained: false): a dry run of the pipeline, at chance level")
    weights.add_argument("--checkpoint", type=Path, default=None, help="a weights file of the model (a fine-tuned head: one output per class folder)")
    merge = sub.add_parser(
        "merge", help="merge the results files of sharded runs into one report",
        description="Merge the results files of sharded runs (pytest --qrel-shard K/N --qrel-results shard-K.json) into "
                    "one verdict, report and exit code. Every verdict is recomputed from its numbers; the suites must be "
                    "the files the shards ran.",
        epilog="example: qrel merge shard-*.json --report reports/all.html")
    merge.add_argument("results", nargs="+", type=Path, help="results files written with --qrel-results")
    merge.add_argument("--report", type=Path, default=None, help="write the HTML report here (and a Markdown summary beside it)")
    merge.add_argument("--report-url", default=None, metavar="URL",
                       help="where CI publishes the HTML report: the Markdown summary's links point there (default: the report's file name)")
    merge.add_argument("--junitxml", type=Path, default=None, help="write a junit XML file of every check here")
    merge.add_argument("--results", dest="merged", type=Path, default=None, help="write the merged results file here")
    merge.add_argument("--root", type=Path, default=None,
                       help="the folder the suite paths in the results files are relative to (default: the current one)")
    merge.add_argument("--suite", dest="suites", action="append", type=Path, default=[],
                       help="a suite file the merge must cover (repeatable; default: the suites the files name)")
    merge.add_argument("--inconclusive", choices=("fail", "warn", "pass"), default=None,
                       help="what an inconclusive check does (default: the suite's 'inconclusive:')")
    merge.add_argument("--allow-skip-all", action="store_true", default=False,
                       help="exit 0 for a run in which no check was verified (every one skipped, e.g. data missing); by default it fails")
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """argparse, plus pytest-qrel's one "did you mean" (:class:`UnknownNameError`) for an unknown
    command or option, printed under the usage of the command it was given to (exit code 2)."""
    from .errors import UnknownNameError

    parser = _parser()
    commands = _subparsers(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in commands and argv.index(first) == 0:
        parser.error(str(UnknownNameError("command", first, commands)))
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = commands[args.command]
        options = [o for a in command._actions for o in a.option_strings if o.startswith("--")]
        unknown = extra[0]
        if unknown.startswith("-"):
            command.error(str(UnknownNameError("option", unknown.split("=", 1)[0], options)))
        command.error(f"unexpected argument '{unknown}' (see: qrel {args.command} --help)")
    return args


def _init(args: argparse.Namespace) -> int:
    from .init_suite import InitRequest, model_notes, write_starter_suite

    import shlex

    from .init_suite import name_key

    # the default file name is a key (no spaces): it starts every node id, and the commands below are pasted
    out = args.out or Path("suites") / f"{name_key(args.folder.resolve().name, 'suite')}.yaml"
    req = InitRequest(model=args.model, data=args.folder, out=out, name=args.name, random_init=args.random_init, checkpoint=args.checkpoint)
    if ":" not in args.model or args.model.startswith("timm:"):  # timm's import (torch) is the seconds a user waits here
        print(f"qrel init: checking timm model '{args.model.removeprefix('timm:')}' ...", file=sys.stderr, flush=True)
    path, layout = write_starter_suite(req)
    splits = ", ".join(f"{s}: {n} images" for s, n in layout.images.items())
    dirs = ", ".join(f"{s}: {d}" for s, d in layout.split_dirs.items())
    where = f"split_dirs {{{dirs}}}" if layout.split_dirs else "class folders without splits"
    print(f"qrel init: wrote {path} ({len(layout.classes)} classes; {where}; {splits})")
    print(f"  paths in it are relative to {path.parent.as_posix() or '.'}/ (the suite file's folder)")
    if args.random_init:
        print("  random weights (pretrained: false): a dry run; its FP32 top-1 is at chance level, and the baseline is stored with a warning")
    for note in model_notes(req, layout):
        print(f"  note: {note}")
    print("next:")
    suite, report = shlex.quote(path.as_posix()), shlex.quote(f"reports/{name_key(path.stem, 'suite')}.html")
    print(f"  pytest --qrel-suite {suite} --qrel-update-baselines   # once: the FP32 baseline")
    print(f"  pytest --qrel-suite {suite} --qrel-report {report}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from .shards import (
        MergeError,
        failing,
        merge,
        report_path_problem,
        results_path_problem,
        write_junit,
        write_report,
        write_results,
    )

    # Output paths first: a typo must not cost a merge, nor overwrite a file that is not ours.
    if args.report is not None and (problem := report_path_problem(args.report)):
        raise MergeError(f"--report {args.report}: {problem}")
    if args.report_url is not None:
        from .output_paths import report_url_problem

        if problem := report_url_problem(args.report_url, report_given=args.report is not None, report_flag="--report"):
            raise MergeError(f"--report-url {args.report_url}: {problem}")
    if args.merged is not None and (problem := results_path_problem(args.merged)):
        raise MergeError(f"--results {args.merged}: {problem}")
    if args.junitxml is not None and args.junitxml.is_dir():
        raise MergeError(f"--junitxml {args.junitxml}: is a folder; give the path of an .xml file")
    notes: list[str] = []
    results = merge(args.results, root=args.root, suites=args.suites, inconclusive=args.inconclusive, notes=notes)
    for line in notes:
        print(f"qrel merge: WARNING: {line}", file=sys.stderr)
    verdict = results.verdict()  # the one policy (pytest_qrel.policy): the report's status, the counts and this exit code
    print(f"qrel merge: {len(args.results)} results file(s), {verdict.tally}")
    if args.report:
        print(f"report: {write_report(results, args.report, report_url=args.report_url)}")
    if args.junitxml:
        print(f"junit: {write_junit(results, args.junitxml)}")
    if args.merged:
        plan_ids: dict[str, list[str]] = {}
        for v in results.verdicts:
            plan_ids.setdefault(v.suite, []).append(v.nodeid)
        print(f"results: {write_results(results, args.merged, plan_ids=plan_ids)}")
    for line in verdict.lines():
        print(line)
    bad = failing(results)
    if bad:
        print(f"FAIL: {len(bad)} check(s) block the release, e.g. {bad[0].nodeid}: {bad[0].message}")
    code = verdict.exit_code(allow_nothing_verified=args.allow_skip_all)
    if code and not bad:
        print("NOT VERIFIED: no check was verified; provide the data the skipped checks name, or pass --allow-skip-all "
              "to accept a run that verifies nothing")
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        return _init(args) if args.command == "init" else _merge(args)
    except QrelError as exc:
        print(f"qrel {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # writing an output: a read-only folder, a full disk
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"qrel {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
