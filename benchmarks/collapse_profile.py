"""Summarise ``py-spy record --format raw`` files (collapsed stacks): samples per process and the
functions with the most inclusive samples (each function counted once per stack).

    python benchmarks/collapse_profile.py DIR_OR_FILE [--top 25] [--match pytest_qrel]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<fn>[^ (]+) \((?P<file>[^:)]+)(?::\d+)?\)$")


def summarise(path: Path, top: int, match: str | None) -> None:
    per_process: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        per_process[frames[0][:90]] += n
        seen = set()
        for f in frames[1:]:
            m = _FRAME.match(f)
            name = f"{m['fn']} ({'/'.join(Path(m['file']).parts[-2:])})" if m else f
            if name not in seen and (match is None or match in f):
                seen.add(name)
                inclusive[name] += n
    print(f"\n{path.name}: {total} samples")
    for proc, n in per_process.most_common(8):
        print(f"  {100 * n / max(1, total):5.1f} %  {proc}")
    for name, n in inclusive.most_common(top):
        print(f"    {100 * n / max(1, total):5.1f} %  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default=None)
    args = parser.parse_args()
    files = sorted(args.path.glob("*.txt")) if args.path.is_dir() else [args.path]
    for f in files:
        summarise(f, args.top, args.match)


if __name__ == "__main__":
    main()
