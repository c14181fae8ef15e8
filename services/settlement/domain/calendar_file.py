"""Calendar files: the holidays and make-up working days of a range, as YAML or CSV.

One format for ImportCalendar, ExportCalendar and the files shipped in
services/settlement/calendar_data/, so that an export imports back unchanged.

YAML::

    from: 2027-01-01          # optional: the range may come with the request instead
    to: 2027-12-31
    days:
      - {date: 2027-01-01, kind: holiday, name: "New Year's Day (元旦)"}
      - {date: 2027-02-20, kind: workday, name: "Spring Festival make-up day"}

CSV (the range comes with the request; `#` lines and blank lines are ignored)::

    date,kind,name
    2027-01-01,holiday,New Year's Day (元旦)

Inside the range a day not listed is a working day Monday to Friday and a non-working
day on Saturday and Sunday. `holiday` makes a day non-working; `workday` (a make-up
working day, 调休) makes a Saturday or Sunday a working day. Every problem is reported
with its line, all at once.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import yaml

from shared.validation import EARLIEST_DATE, LATEST_DATE, has_control_characters, quote

MAX_FILE_DAYS = 3660  # ten years in one file
MAX_NAME_CHARS = 200
# A calendar is a mapping of a list of mappings; PyYAML composes nested collections
# recursively, so a file nested thousands deep would end in a RecursionError.
MAX_YAML_NESTING = 16
CSV_HEADER = ("date", "kind", "name")
KINDS = {"holiday": False, "workday": True}


class FileFormat(Enum):
    CSV = "CSV"
    YAML = "YAML"


@dataclass(frozen=True, slots=True)
class FileDay:
    day: dt.date
    working: bool
    name: str
    line: int  # 1-based line in the file, 0 when not read from a file

    @property
    def kind(self) -> str:
        return "workday" if self.working else "holiday"


@dataclass(frozen=True, slots=True)
class CalendarFile:
    first: dt.date | None
    last: dt.date | None
    days: tuple[FileDay, ...]
    first_line: int = 0
    last_line: int = 0


@dataclass(frozen=True, slots=True)
class Problem:
    line: int | None
    description: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.description}" if self.line else self.description


class CalendarFileError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


def parse(content: str, fmt: FileFormat) -> CalendarFile:
    """The file's range and days; CalendarFileError lists every problem with its line."""
    content = content.removeprefix("\ufeff")
    problems: list[Problem] = []
    parsed = _parse_yaml(content, problems) if fmt is FileFormat.YAML else _parse_csv(
        content, problems
    )
    _check_days(parsed.days, problems)
    if parsed.first and parsed.last and parsed.last < parsed.first:
        problems.append(Problem(parsed.last_line or None, "`to` is before `from`"))
    if problems:
        raise CalendarFileError(problems)
    return parsed


def check_range(file: CalendarFile, first: dt.date, last: dt.date) -> list[Problem]:
    """The days of `file` outside [first, last]."""
    return [
        Problem(d.line or None, f"{d.day.isoformat()} is outside the range {first}..{last}")
        for d in file.days
        if not first <= d.day <= last
    ]


def render(
    first: dt.date, last: dt.date, days: Iterable[FileDay], fmt: FileFormat, header: str = ""
) -> str:
    """The file for `days` in [first, last]; parse() reads it back to the same days."""
    ordered = sorted(days, key=lambda d: d.day)
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    if fmt is FileFormat.CSV:
        out = io.StringIO()
        out.write(comments)
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for d in ordered:
            writer.writerow((d.day.isoformat(), d.kind, d.name))
        return out.getvalue()
    lines = [comments.rstrip("\n")] if comments else []
    lines += [f"from: {first.isoformat()}", f"to: {last.isoformat()}"]
    if not ordered:
        lines.append("days: []")
    else:
        lines.append("days:")
        for d in ordered:
            # A JSON string is a valid YAML double-quoted scalar: any name survives.
            name = json.dumps(d.name, ensure_ascii=False)
            lines.append(f"  - {{date: {d.day.isoformat()}, kind: {d.kind}, name: {name}}}")
    return "\n".join(lines) + "\n"


# ---- reading ----


def _day(text: str, line: int, problems: list[Problem]) -> dt.date | None:
    try:
        if len(text) != 10:
            raise ValueError(text)
        day = dt.date.fromisoformat(text)
    except ValueError:
        problems.append(Problem(line, f"date {text!r} is not a date YYYY-MM-DD"))
        return None
    if not EARLIEST_DATE <= day <= LATEST_DATE:
        # The shared date limits: a range ending on 9999-12-31 has no next day to walk to.
        problems.append(Problem(line, f"date {text!r} is not from {EARLIEST_DATE} to "
                                      f"{LATEST_DATE}"))
        return None
    return day


def _entry(
    line: int, date_text: str, kind_text: str, name: str, problems: list[Problem]
) -> FileDay | None:
    before = len(problems)
    day = _day(date_text.strip(), line, problems)
    kind = kind_text.strip().lower()
    if kind not in KINDS:
        problems.append(Problem(line, f"kind {quote(kind_text)} is not holiday or workday"))
    name = name.strip()
    if not name:
        problems.append(Problem(line, "name is required"))
    elif any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        problems.append(Problem(line, "name must not contain NUL or other control characters"))
    elif len(name) > MAX_NAME_CHARS:
        problems.append(Problem(line, f"name is longer than {MAX_NAME_CHARS} characters"))
    elif has_control_characters(name, allow="\t"):
        # Stored and printed: PostgreSQL cannot store a NUL, a control character breaks
        # the exported file and the logs.
        problems.append(Problem(line, "name must not contain NUL or other control characters"))
    if len(problems) > before or day is None:
        return None
    working = KINDS[kind]
    if working and day.weekday() < 5:
        problems.append(
            Problem(line, f"{day.isoformat()} is a {day.strftime('%A')}: a make-up working "
                          "day (workday) must be a Saturday or a Sunday")
        )
        return None
    return FileDay(day, working, name, line)


def _check_days(days: Iterable[FileDay], problems: list[Problem]) -> None:
    seen: dict[dt.date, int] = {}
    count = 0
    for d in days:
        count += 1
        if d.day in seen:
            problems.append(
                Problem(d.line, f"{d.day.isoformat()} is listed twice (also line {seen[d.day]})")
            )
        else:
            seen[d.day] = d.line
    if count > MAX_FILE_DAYS:
        problems.append(Problem(None, f"more than {MAX_FILE_DAYS} days in one file"))


def _rows(reader: Any, problems: list[Problem]) -> Iterable[list[str]]:
    """The rows of a CSV file; a file the csv module cannot read (a field past its
    131,072-character limit, a NUL byte) is a problem of its line, not an INTERNAL."""
    try:
        yield from reader
    except csv.Error as exc:
        problems.append(Problem(reader.line_num or None, f"not readable as CSV: {exc}"))


def _parse_csv(content: str, problems: list[Problem]) -> CalendarFile:
    days: list[FileDay] = []
    reader = csv.reader(io.StringIO(content))
    header_seen = False
    for row in _rows(reader, problems):
        line = reader.line_num
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        cells = [cell.strip() for cell in row]
        if not header_seen:
            header_seen = True
            if tuple(c.lower() for c in cells) != CSV_HEADER:
                problems.append(Problem(line, "the header must be date,kind,name"))
                return CalendarFile(None, None, ())
            continue
        if len(cells) != len(CSV_HEADER):
            problems.append(Problem(line, f"expected 3 columns (date,kind,name), got {len(cells)}"))
            continue
        entry = _entry(line, cells[0], cells[1], cells[2], problems)
        if entry is not None:
            days.append(entry)
    if not header_seen:
        problems.append(Problem(None, "empty file: the header date,kind,name is missing"))
    return CalendarFile(None, None, tuple(days))


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _scalar(node: yaml.Node, what: str, problems: list[Problem]) -> str | None:
    if isinstance(node, yaml.ScalarNode):
        return str(node.value)
    problems.append(Problem(_line(node), f"{what} must be a single value"))
    return None


def _too_deep(content: str) -> int | None:
    """The line where the file's collections nest past MAX_YAML_NESTING, or None. Reads
    the parser's events (a loop, not recursion) before anything is composed."""
    depth = 0
    for event in yaml.parse(content, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_NESTING:
                mark = event.start_mark
                return mark.line + 1 if mark is not None else 1
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def _parse_yaml(content: str, problems: list[Problem]) -> CalendarFile:
    try:
        deep = _too_deep(content)
        if deep is not None:
            problems.append(Problem(deep, f"nested deeper than {MAX_YAML_NESTING} levels"))
            return CalendarFile(None, None, ())
        root = yaml.compose(content, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        what = getattr(exc, "problem", None) or str(exc)
        problems.append(Problem(mark.line + 1 if mark else None, f"not valid YAML: {what}"))
        return CalendarFile(None, None, ())
    if not isinstance(root, yaml.MappingNode):
        line = _line(root) if root is not None else None
        problems.append(Problem(line, "the file must be a mapping with `days` (and `from`, `to`)"))
        return CalendarFile(None, None, ())
    first = last = None
    first_line = last_line = 0
    days: list[FileDay] = []
    days_seen = False
    for key_node, value in root.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if key in ("from", "to"):
            text = _scalar(value, f"`{key}`", problems)
            day = _day(text, _line(value), problems) if text is not None else None
            if key == "from":
                first, first_line = day, _line(value)
            else:
                last, last_line = day, _line(value)
        elif key == "days":
            days_seen = True
            days = _yaml_days(value, problems)
        else:
            problems.append(Problem(_line(key_node), f"unknown key {key!r} (from, to, days)"))
    if not days_seen:
        problems.append(Problem(None, "`days` is missing (use `days: []` for none)"))
    return CalendarFile(first, last, tuple(days), first_line, last_line)


def _yaml_days(node: yaml.Node, problems: list[Problem]) -> list[FileDay]:
    if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
        return []
    if not isinstance(node, yaml.SequenceNode):
        problems.append(Problem(_line(node), "`days` must be a list"))
        return []
    days = []
    for item in node.value:
        line = _line(item)
        if not isinstance(item, yaml.MappingNode):
            problems.append(Problem(line, "a day must be a mapping {date, kind, name}"))
            continue
        fields: dict[str, str] = {}
        for key_node, value in item.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key not in CSV_HEADER:
                problems.append(Problem(_line(key_node), f"unknown key {key!r} (date, kind, name)"))
                continue
            text = _scalar(value, f"`{key}`", problems)
            if text is not None:
                fields[str(key)] = text
        missing = [k for k in CSV_HEADER[:2] if k not in fields]
        if missing:
            problems.append(Problem(line, f"missing {', '.join(missing)}"))
            continue
        entry = _entry(line, fields["date"], fields["kind"], fields.get("name", ""), problems)
        if entry is not None:
            days.append(entry)
    return days
