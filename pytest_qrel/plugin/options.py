"""The command-line options and ini values of pytest-qrel, with typed parsers.

A parser turns the text into the value the plugin uses (``--qrel-shard 2/4`` -> ``(2, 4)``) or
raises :class:`pytest.UsageError` with one line saying what is expected, as xdist's options do:
pytest then prints it as a usage error before any collection.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest


def parse_shard(value: str) -> tuple[int, int]:
    """``K/N`` -> ``(K, N)``, shards numbered ``1..N``."""
    try:
        k, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise pytest.UsageError(f"--qrel-shard {value}: expected K/N with integers, e.g. 1/4") from None
    if not 1 <= k <= n:
        raise pytest.UsageError(f"--qrel-shard {value}: K must be between 1 and N (shards are numbered 1..N)")
    return k, n


def parse_workers(value: str) -> int | None:
    """``auto`` -> ``None`` (chosen from the cores), else a number of DataLoader worker processes."""
    if value == "auto":
        return None
    if value.isdigit():
        return int(value)
    raise pytest.UsageError(f"--qrel-workers {value}: expected 'auto' or a number of DataLoader worker processes (0 = none)")


def parse_device(value: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:K`` or ``mps``; an accelerator that is not there is refused here."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise pytest.UsageError(f"--qrel-device {value}: expected auto, cpu, cuda, cuda:K or mps")
    if value not in ("auto", "cpu"):  # checked once, here: not blamed on the first stage that moves a tensor
        from ..engine.loading import device_problem

        if (problem := device_problem(value)) is not None:
            raise pytest.UsageError(problem)
    return value


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("qrel", "pytest-qrel: reliability gates for quantized vision models")
    group.addoption("--qrel-suite", action="append", default=[], metavar="PATH",
                    help="run this reliability suite (YAML); may be given several times. Only suites are then collected.")
    group.addoption("--qrel-report", metavar="PATH", default=None,
                    help="write a self-contained HTML audit report here (and a Markdown summary next to it, .md).")
    group.addoption("--qrel-report-url", metavar="URL", default=None,
                    help="where CI publishes the HTML report: the Markdown summary's links point there (default: the report's file name).")
    group.addoption("--qrel-results", metavar="PATH", default=None,
                    help="write the run's results (verdicts, report tables, environment, suite hashes) as JSON, for 'qrel merge'.")
    group.addoption("--qrel-shard", metavar="K/N", default=None, type=parse_shard,
                    help="run shard K of N: a deterministic, cost-balanced 1/N of the units (all checks of a unit together).")
    group.addoption("--qrel-update-baselines", action="store_true", default=False,
                    help="(re)write the FP32 baselines of the collected suites before checking against them.")
    group.addoption("--qrel-strict", action="store_true", default=False,
                    help="treat missing datasets as errors instead of skipping their checks.")
    group.addoption("--qrel-allow-skip-all", action="store_true", default=False,
                    help="let a run in which no check was verified (every one skipped: data missing) pass; by default it fails.")
    group.addoption("--qrel-inconclusive", default=None, choices=("fail", "warn", "pass"),
                    help="what a check demanding confidence whose interval straddles its bound does (default: the suite's "
                         "'inconclusive:', fail): fail the run, pass with a warning, or pass.")
    group.addoption("--qrel-device", default="auto", metavar="DEVICE", type=parse_device,
                    help="torch device: auto (cuda, else mps, else cpu), cpu, cuda, cuda:K or mps; under -n, worker K uses GPU K mod count.")
    group.addoption("--qrel-workers", default="auto", metavar="N", type=parse_workers,
                    help="DataLoader worker processes that decode image files (default auto: from the cores per pytest worker).")
    group.addoption("--qrel-compile", action="store_true", default=False,
                    help="run the activation fake-quantizers through torch.compile (bit-identical logits; pays off on large datasets).")
    group.addoption("--qrel-no-cache", action="store_true", default=False,
                    help="do not read or write the outputs cache and decoded-image store (.pytest_cache/d/qrel).")
    parser.addini("qrel_suite_glob", "suite files collected by path (relative to rootdir)", default="suites/*.yaml")
    parser.addini("qrel_baseline_dir", "directory of stored FP32 baselines (relative to rootdir)", default="baselines")


def suite_paths(config: pytest.Config) -> list[Path]:
    """The ``--qrel-suite`` files, resolved; one that does not exist is a usage error."""
    paths = []
    for raw in config.getoption("qrel_suite") or []:
        path = Path(raw)
        if not path.is_file():
            from ..errors import did_you_mean

            beside = sorted(str(p) for p in path.parent.glob("*.y*ml")) if path.parent.is_dir() else []
            raise pytest.UsageError(f"--qrel-suite {raw}: no such file{did_you_mean(raw, beside)} (give the path of a suite YAML file)")
        paths.append(path.resolve())
    return paths
