"""Ratios from one `llama-bench -o md` table: the first model's tokens/s over each other's.

    llama-bench ... -o md | python bench/ratios.py TYPE1 TYPE2 ...   (types in the order of -m)

Rows come in -m order, one per test (pp512, tg128) per model.
"""

import re
import sys


def main() -> None:
    types = sys.argv[1:]
    rows = [l for l in sys.stdin.read().splitlines() if l.startswith("|") and "t/s" not in l and "---" not in l]
    by_test: dict[str, list[float]] = {}
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        test, ts = cells[-2], cells[-1]
        m = re.match(r"([0-9.]+)", ts)
        if m:
            by_test.setdefault(test, []).append(float(m.group(1)))
    print("| test | " + " | ".join(f"{types[0]} / {t}" for t in types[1:]) + " |")
    print("| --- |" + " ---: |" * (len(types) - 1))
    for test, vals in by_test.items():
        if len(vals) != len(types):
            print(f"| {test} | (expected {len(types)} rows, got {len(vals)}) |")
            continue
        print(f"| {test} | " + " | ".join(f"{vals[0] / v:.2f}x" for v in vals[1:]) + " |")


if __name__ == "__main__":
    main()
