"""Audit of the checkable claims in five LLM transcripts of the homework (``python -m repro.claims``).

``select`` picks registry entries by id; ``check`` runs one entry's checker and never raises:
a checker that fails (raises, or returns no valid basis or verdict) reports verdict "error"
with the message, so one broken check cannot hide the others; the CLI then exits 1.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass

from .checkers.common import BASES, ERROR, VERDICTS, Context, Finding
from .registry import CLAIMS, Claim


@dataclass
class Result:
    claim: Claim
    finding: Finding
    seconds: float

    def as_dict(self) -> dict:
        return {
            "id": self.claim.id,
            "catalogue_id": self.claim.catalogue_id,
            "assistant": self.claim.assistant,
            "transcript": self.claim.transcript,
            "quote": self.claim.quote,
            "claimed": self.claim.claimed,
            "measured": self.finding.measured,
            "verdict": self.finding.verdict,
            "basis": self.finding.basis,
            "evidence": self.finding.evidence,
            "seconds": round(self.seconds, 3),
        }


def select(only: str | None) -> list[Claim]:
    """Claims whose id is `only`, starts with `only/`, or (failing both) starts with `only`."""
    if not only:
        return list(CLAIMS)
    exact = [c for c in CLAIMS if c.id == only or c.id.startswith(only + "/")]
    return exact or [c for c in CLAIMS if c.id.startswith(only)]


def close_matches(only: str) -> list[str]:
    ids = sorted({c.id for c in CLAIMS} | {c.catalogue_id for c in CLAIMS})
    near = difflib.get_close_matches(only, ids, n=5, cutoff=0.5)
    return near or [i for i in ids if i.split("-")[0] == only.split("-")[0]][:8]


def duration(seconds: float) -> str:
    """An assistant's time as it said it: seconds, minutes or hours."""
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    if seconds >= 600:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def stage_reports(log_dir: str = "logs", records: list[dict] | None = None) -> dict[str, list[str]]:
    """Per ladder stage, what the assistants reported for it (time, accuracy) with the audit's
    verdict on that answer, one text each: read from the registry's ``stage_reports``, the same
    numbers the claims' checkers judge. The ladder table and the report show them. The verdicts
    judge ``records`` when given (the report's logs together), else the log in ``log_dir``."""
    ctx, out = Context(log_dir=str(log_dir), records=records), {}
    for claim in CLAIMS:
        reports = claim.params.get("stage_reports")
        if not reports:
            continue
        verdict = check(claim, ctx).finding.verdict
        for stage, (seconds, accuracy) in reports.items():
            out.setdefault(stage, []).append(f"{claim.assistant}: {duration(seconds)}, {accuracy:.0%} "
                                             f"({claim.id}: {verdict})")
    return out


def ladder_column(records: list[dict]) -> tuple[str, dict[str, str]]:
    """The ladder table's "LLM reported" column (entry point ``repro.ladder_columns``), judged on
    ``records``: per stage, what each assistant reported with the audit's verdict."""
    return "LLM reported", {stage: "; ".join(texts) for stage, texts in stage_reports(records=records).items()}


def check(claim: Claim, ctx: Context) -> Result:
    start = time.perf_counter()
    try:
        finding = claim.checker(claim, ctx)
        if finding.verdict not in VERDICTS or finding.verdict == ERROR:
            raise ValueError(f"verdict {finding.verdict!r} is not one of {', '.join(VERDICTS[:-1])}")
        if finding.basis not in BASES:
            raise ValueError(f"basis {finding.basis!r} is not one of {', '.join(BASES)}")
    except Exception as exc:  # noqa: BLE001 (reported in the table and the exit status, not swallowed)
        finding = Finding("—", ERROR, f"checker failed: {type(exc).__name__}: {exc}")
    return Result(claim, finding, time.perf_counter() - start)
