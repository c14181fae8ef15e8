"""The tests, the benchmarks and CI read nothing outside the repository: a plain `git clone`
anywhere must be able to run them (the worked cases live in tests/cases)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "cases"

# Ways a path escapes the checkout: the folder beside the repository, an absolute path of the
# machine the suite was written on, or climbing past the repository root from a file in it.
_ESCAPES = re.compile(
    r"\.\./shared"
    r"|ROOT\.parent\b"
    r"|REPO\.parent\b"
    r"|/work/"
    r"|parent\.parent\.parent"
    r"|parents\[[3-9]\]"
)


def _sources() -> list[Path]:
    files = [p for d in ("tests", "bench", "scripts") for p in (ROOT / d).rglob("*.py")]
    files += [ROOT / "Makefile", *sorted((ROOT / ".ci").iterdir())]
    return [p for p in files if p.resolve() != Path(__file__).resolve()]


def test_no_test_bench_or_ci_file_reads_outside_the_repository():
    sources = _sources()
    assert len(sources) > 50, "the scan found too few files to mean anything"
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sources
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if _ESCAPES.search(line)
    ]
    assert offenders == []


def test_the_worked_cases_the_tests_use_are_in_the_repository():
    for name in ("fees.json", "settlement_dates.json", "settlement_month.json", "README.md"):
        assert (CASES / name).is_file(), name
    assert "shared/spec/cases" in (CASES / "README.md").read_text()
