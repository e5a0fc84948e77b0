"""``python -m repro.claims``: check every registered LLM claim and print a verdict table.

Each row says what its verdict rests on (basis: computed, text or judgement). Exit status 0,
or 1 when a checker failed (verdict "error"), or 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import UserError, cli_main
from . import check, close_matches, select
from .checkers.common import BASES, ERROR, NA, NO, PARTLY, YES, Context

EXIT_CHECKER_FAILED = 1


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m repro.claims", description=__doc__)
    p.add_argument("--only", metavar="ID", help="check only claims whose id starts with ID (e.g. q5, q1b-const)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of the table")
    p.add_argument("--log-dir", default="logs", help="where runs.jsonl lives (ResNet claims; default logs)")
    p.add_argument("--seed", type=int, default=0, help="seed of every simulation (default 0)")
    p.add_argument("--quick", action="store_true", help="small Monte Carlo sizes (for tests; SEs grow)")
    p.add_argument("--blog-text", metavar="FILE", help="the full text of post 1 to search (e.g. transcript "
                   "004_2ca81225e9ca24a0.txt); default: the post's sentences quoted in the claims catalogue")
    return p.parse_args(argv)


def counts(results) -> tuple[dict[str, int], dict[str, int]]:
    """Findings per verdict (errors apart from n.a.) and per basis (errors have none)."""
    verdicts = {v: sum(r.finding.verdict == v for r in results) for v in (YES, NO, PARTLY, NA, ERROR)}
    bases = {b: sum(r.finding.basis == b for r in results) for b in BASES}
    return verdicts, bases


def summary_line(results, seconds: float) -> str:
    verdicts, bases = counts(results)
    return (" ".join(f"{v} {n}" for v, n in verdicts.items()) + "; basis "
            + ", ".join(f"{b} {n}" for b, n in bases.items()) + f"  ({len(results)} claims, {seconds:.1f} s)")


def render_table(results, seconds: float):
    from rich.console import Console
    from rich.table import Table

    table = Table(title="LLM claims, checked", show_lines=True, expand=True)
    for name, kw in (("id", {"no_wrap": True}), ("assistant", {}), ("claimed", {}),
                     ("measured / computed", {"ratio": 3}), ("verdict", {"justify": "center"}),
                     ("basis", {"no_wrap": True}), ("evidence", {"ratio": 2})):
        table.add_column(name, **kw)
    colour = {YES: "green", NO: "red", PARTLY: "yellow", ERROR: "bold magenta"}
    for r in results:
        v = r.finding.verdict
        table.add_row(r.claim.id, r.claim.assistant, r.claim.claimed, r.finding.measured,
                      f"[{colour.get(v, 'dim')}]{v}[/]", r.finding.basis or "—", r.finding.evidence)
    console = Console()
    if not console.is_terminal:  # a log file or pipe: do not squeeze the evidence into 80 columns
        console = Console(width=220)
    console.print(table)
    console.print(summary_line(results, seconds), markup=False)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    claims = select(args.only)
    if not claims:
        raise UserError(f"no claim id matches {args.only!r}; close: {', '.join(close_matches(args.only)) or 'none'}")
    if args.blog_text and not Path(args.blog_text).is_file():
        raise UserError(f"--blog-text {args.blog_text}: no such file")
    ctx = Context(seed=args.seed, quick=args.quick, log_dir=args.log_dir, blog_text=args.blog_text)
    start = time.perf_counter()
    results = [check(c, ctx) for c in claims]
    if args.json:
        print(json.dumps([r.as_dict() for r in results], ensure_ascii=False, indent=1))
    else:
        render_table(results, time.perf_counter() - start)
    failed = [r.claim.id for r in results if r.finding.verdict == ERROR]
    if failed:
        print(f"error: {len(failed)} checker(s) failed: {', '.join(failed)}", file=sys.stderr)
        return EXIT_CHECKER_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
