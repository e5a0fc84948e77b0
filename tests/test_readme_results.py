"""The README's results table, recomputed from the records each row names.

Every row of the table under "## Results" ends in a `records` column of links to run logs under
`logs/reference/`. The row's first cell names the stage, the preset and the number of runs (and,
where a log holds more runs of that stage than the row takes, the seeds). From the ok, eager
records of that stage and preset in the named logs this test recomputes, at the README's printed
rounding:

- the test accuracy, mean ± sample std in percent;
- the seconds on the named clock (`seconds_by_timing[clock]`), mean ± sample std;
- the "to X%" time (`repro.resnet.records.LoggedRun.seconds_to_target` at X), or that no run reached X ("never X%");
- the source's accuracy, seconds and hardware (the stage file's `[source]`, kept in each record);
- the "N% of the bf16 rate" in the details cell (the records' `utilisation`);
- the machine and precision (the records' `hardware` and `precision`).

A row that names no records, names a missing file, or selects no records fails.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import pytest

from repro.resnet.records import LoggedRun
from repro.runlog import read_records

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
RUN = re.compile(r"^`(?P<stage>\w+)`, `(?P<preset>\w+)`, (?P<n>\d+) runs?"
                 r"(?: \(seeds? (?P<first>\d+)(?:[–-](?P<last>\d+))?\))?$")
VALUE = r"(?P<mean>\d+(?:\.\d+)?)(?: ± (?P<std>\d+(?:\.\d+)?))?"


def results_table(text: str) -> list[dict[str, str]]:
    """The first table of the README's "## Results" section, one dict per row (header -> cell)."""
    section = text.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split(" | ")])
    header, rows = table[0], table[2:]
    return [dict(zip(header, cells)) for cells in rows]


def _decimals(printed: str) -> int:
    return len(printed.split(".")[1]) if "." in printed else 0


def _check_value(problems: list[str], what: str, values: list[float], match: re.Match) -> None:
    """``values`` printed as ``match`` (mean, and ± sample std with more than one value)."""
    mean, std = match["mean"], match["std"]
    got = f"{statistics.fmean(values):.{_decimals(mean)}f}"
    if got != mean:
        problems.append(f"{what}: README {mean}, records {got}")
    if len(values) > 1:
        if std is None:
            problems.append(f"{what}: {len(values)} runs but no ± std in the README")
        else:
            got = f"{statistics.stdev(values):.{_decimals(std)}f}"
            if got != std:
                problems.append(f"{what} std: README {std}, records {got}")
    elif std is not None:
        problems.append(f"{what}: a ± std in the README for a single run")


def select(row: dict[str, str], root: Path = ROOT) -> tuple[list[dict], list[str]]:
    """The records a row names, and what is wrong with how it names them."""
    problems = []
    run = RUN.match(row.get("run", ""))
    if run is None:
        return [], [f"run cell {row.get('run')!r} is not '`stage`, `preset`, N runs [(seeds A–B)]'"]
    paths = LINK.findall(row.get("records", ""))
    if not paths:
        return [], [f"{row['run']}: the row names no records"]
    records = []
    for link in paths:
        path = (root / link).resolve()
        if not path.is_relative_to((root / "logs" / "reference").resolve()):
            problems.append(f"{row['run']}: {link} is not under logs/reference/")
        if not path.is_file():
            problems.append(f"{row['run']}: {link} does not exist")
            continue
        records += read_records(path)
    seeds = None
    if run["first"] is not None:
        seeds = set(range(int(run["first"]), int(run["last"] or run["first"]) + 1))
    chosen = [r for r in records
              if r.get("stage") == run["stage"] and r.get("preset") == run["preset"]
              and r.get("status") == "ok" and not r.get("compiled")
              and (seeds is None or r.get("seed") in seeds)]
    if not chosen:
        problems.append(f"{row['run']}: no ok eager records of that stage and preset in {paths}")
        return [], problems
    if len(chosen) != int(run["n"]):
        problems.append(f"{row['run']}: {len(chosen)} records, the README says {run['n']}")
    found = [r.get("seed") for r in chosen]
    if len(set(found)) != len(found):
        problems.append(f"{row['run']}: a seed is counted twice: {sorted(found)}")
    if seeds is not None and set(found) != seeds:
        problems.append(f"{row['run']}: seeds {sorted(found)} in the records, {sorted(seeds)} in the README")
    return chosen, problems


def check_row(row: dict[str, str], root: Path = ROOT) -> list[str]:
    """Everything in a row that its records do not give back; empty when the row holds."""
    records, problems = select(row, root)
    if not records:
        return problems
    name = row["run"]

    accuracy = re.fullmatch(VALUE + "%", row["test accuracy"])
    if accuracy is None:
        problems.append(f"{name}: test accuracy {row['test accuracy']!r} is not 'M[ ± S]%'")
    else:
        _check_value(problems, f"{name} accuracy", [r["test_accuracy"] * 100 for r in records], accuracy)

    clock = re.search(r"\((\w+)\)$", row["seconds (clock)"])
    if clock is None:
        problems.append(f"{name}: seconds {row['seconds (clock)']!r} name no clock")
    else:
        clock = clock[1]
        for part in (p.strip() for p in row["seconds (clock)"].split(";")):
            if any(clock not in (r.get("seconds_by_timing") or {}) for r in records):
                problems.append(f"{name}: a record has no seconds on the {clock} clock")
                break
            if (m := re.fullmatch(VALUE + r" \((\w+)\)", part)):
                _check_value(problems, f"{name} seconds ({clock})",
                             [r["seconds_by_timing"][clock] for r in records], m)
            elif (m := re.fullmatch(VALUE + r" to (?P<target>\d+(?:\.\d+)?)%", part)):
                reached = [LoggedRun.from_dict(r).seconds_to_target(clock, float(m["target"]) / 100) for r in records]
                if None in reached:
                    problems.append(f"{name}: not every run reached {m['target']}%")
                else:
                    _check_value(problems, f"{name} to {m['target']}%", reached, m)
            elif (m := re.fullmatch(r"never (?P<target>\d+(?:\.\d+)?)%", part)):
                reached = [LoggedRun.from_dict(r).seconds_to_target(clock, float(m["target"]) / 100) for r in records]
                if any(s is not None for s in reached):
                    problems.append(f"{name}: 'never {m['target']}%', but a run reached it")
            else:
                problems.append(f"{name}: seconds part {part!r} not understood")

    sources = {(s.get("accuracy"), s.get("seconds"), s.get("hardware"))
               for s in ((r.get("config") or {}).get("source") or {} for r in records)}
    if len(sources) != 1 or None in next(iter(sources)):
        problems.append(f"{name}: the records disagree on the source, or lack it: {sources}")
        return problems
    source_accuracy, source_seconds, source_hardware = sources.pop()
    cell = row["source"]
    for printed in re.findall(r"(\d+(?:\.\d+)?)%", cell):
        if f"{source_accuracy * 100:.{_decimals(printed)}f}" != printed:
            problems.append(f"{name}: source accuracy {printed}%, the stage's source {source_accuracy:.2%}")
    for printed in re.findall(r"(\d+(?:\.\d+)?) s\b", cell):
        if f"{source_seconds:.{_decimals(printed)}f}" != printed:
            problems.append(f"{name}: source time {printed} s, the stage's source {source_seconds} s")
    for printed in re.findall(r"\((\w+)\)", cell):
        if printed != source_hardware:
            problems.append(f"{name}: source hardware {printed}, the stage's source {source_hardware}")

    for printed in re.findall(r"(\d+)% of (?:its |the )?bf16 rate", row["details"]):
        if any(r.get("utilisation") is None for r in records):
            problems.append(f"{name}: {printed}% of the bf16 rate, but a record has no utilisation")
            continue
        got = f"{statistics.fmean(r['utilisation'] for r in records) * 100:.0f}"
        if got != printed:
            problems.append(f"{name}: {printed}% of the bf16 rate, records {got}%")

    machine, _, precision = row["machine"].rpartition(", ")
    for r in records:
        hardware = r.get("hardware") or {}
        device = hardware.get("gpu") or hardware.get("cpu") or ""
        if not device or device not in machine:
            problems.append(f"{name}: machine {machine!r}, a record's {device!r}")
        if r.get("precision") != precision:
            problems.append(f"{name}: precision {precision!r}, a record's {r.get('precision')!r}")
    return problems


ROWS = results_table(README.read_text())


def test_the_table_has_a_records_column():
    assert ROWS and all("records" in row for row in ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[row.get("run", "?") for row in ROWS])
def test_each_row_is_its_records(row):
    assert check_row(row) == []


def test_readme_stays_a_front_page():
    assert len(README.read_text().splitlines()) <= 200


def _row(**cells):
    row = dict(ROWS[0])
    row.update(cells)
    return row


def test_a_row_without_records_fails():
    assert any("names no records" in p for p in check_row(_row(records="")))
    assert any("names no records" in p for p in check_row(_row(records="gpu-h200")))
    assert any("names no records" in p for p in check_row({k: v for k, v in ROWS[0].items() if k != "records"}))


def test_a_missing_records_file_fails():
    problems = check_row(_row(records="[gone](logs/reference/no-such-session/runs.jsonl)"))
    assert any("does not exist" in p for p in problems)


def test_records_outside_the_reference_logs_fail():
    problems = check_row(_row(records="[old](logs/unpinned/airbench-v2/runs.jsonl)"))
    assert any("not under logs/reference/" in p for p in problems)


def test_a_row_selecting_no_records_fails(tmp_path):
    assert any("no ok eager records" in p for p in check_row(_row(run="`airbench94`, `narrow`, 3 runs")))
    log = tmp_path / "logs" / "reference" / "empty" / "runs.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text('{"stage": "airbench94", "preset": "full", "status": "interrupted"}\n')
    problems = check_row(_row(records="[empty](logs/reference/empty/runs.jsonl)"), root=tmp_path)
    assert any("no ok eager records" in p for p in problems)


def test_a_wrong_figure_or_count_fails():
    row = ROWS[0]
    bumped = re.sub(r"^(\d+)\.(\d)(\d)", lambda m: f"{m[1]}.{m[2]}{(int(m[3]) + 1) % 10}", row["test accuracy"])
    assert any("accuracy" in p for p in check_row(_row(**{"test accuracy": bumped})))
    more = re.sub(r"(\d+) runs", lambda m: f"{int(m[1]) + 1} runs", row["run"])
    assert any("records, the README says" in p for p in check_row(_row(run=more)))
    assert any("seeds" in p for p in check_row(_row(run=row["run"] + " (seeds 5–7)")))
