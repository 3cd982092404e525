"""Compare two reports' fits.json field by field: every number, string and flag, at every depth.

    python benchmarks/compare_reports.py OLD/fits.json NEW/fits.json [--rtol 0]

Made for issue 23's check that the report pipeline's rewrite changed no number: OLD is a fits.json
written before the rewrite (no `schema` field), NEW one written after. Fields that cannot match
between two runs are skipped: the schema version, and a forecast registration's path and date.
Prints the number of fields compared and every difference; exits 1 if there is one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

SKIPPED = {("schema",), ("registration", "path"), ("registration", "created")}


def differences(old, new, rtol: float = 0.0, path: tuple = ()) -> tuple[int, list[str]]:
    """(fields compared, differences) between two JSON values; floats equal within `rtol`
    (0: exactly), NaN equal to NaN."""
    where = "/".join(map(str, path)) or "(top)"
    if isinstance(old, dict) and isinstance(new, dict):
        n, out = 0, []
        for k in sorted(set(old) | set(new)):
            if (*path, k) in SKIPPED or tuple(p for p in (*path, k) if isinstance(p, str)) in SKIPPED:
                continue
            if k not in old or k not in new:
                out.append(f"{where}/{k}: only in {'new' if k in new else 'old'}")
                continue
            m, d = differences(old[k], new[k], rtol, (*path, k))
            n, out = n + m, out + d
        return n, out
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return 1, [f"{where}: {len(old)} items before, {len(new)} after"]
        n, out = 0, []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            m, d = differences(a, b, rtol, (*path, i))
            n, out = n + m, out + d
        return n, out
    if _number(old) and _number(new):
        same = (math.isnan(old) and math.isnan(new)) or old == new or math.isclose(old, new, rel_tol=rtol)
    else:
        same = type(old) is type(new) and old == new
    return 1, [] if same else [f"{where}: {old!r} before, {new!r} after"]


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for floats (0: exact)")
    a = p.parse_args(argv)
    old, new = (json.loads(f.read_text()) for f in (a.old, a.new))
    n, diffs = differences(old, new, a.rtol)
    series = len(old.get("series", []))
    fits = sum(len(s.get("fits", [])) for s in old.get("series", []))
    print(f"compared {n} fields ({series} series, {fits} fits) of {a.old} and {a.new}, rtol {a.rtol:g}")
    for d in diffs:
        print("  DIFFERS", d)
    print(f"{len(diffs)} difference(s)")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
