"""``python -m repro.claims``: check every registered LLM claim and print a verdict table."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..errors import UserError, cli_main
from . import check, close_matches, select
from .checkers.common import Context


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m repro.claims", description=__doc__)
    p.add_argument("--only", metavar="ID", help="check only claims whose id starts with ID (e.g. q5, q1b-const)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of the table")
    p.add_argument("--log-dir", default="logs", help="where runs.jsonl lives (ResNet claims; default logs)")
    p.add_argument("--seed", type=int, default=0, help="seed of every simulation (default 0)")
    p.add_argument("--quick", action="store_true", help="small Monte Carlo sizes (for tests; SEs grow)")
    return p.parse_args(argv)


def render_table(results, seconds: float):
    from rich.console import Console
    from rich.table import Table

    table = Table(title="LLM claims, checked", show_lines=True, expand=True)
    for name, kw in (("id", {"no_wrap": True}), ("assistant", {}), ("claimed", {}),
                     ("measured / computed", {"ratio": 3}), ("verdict", {"justify": "center"}),
                     ("evidence", {"ratio": 2})):
        table.add_column(name, **kw)
    colour = {"✓": "green", "✗": "red", "~": "yellow"}
    for r in results:
        v = r.finding.verdict
        table.add_row(r.claim.id, r.claim.assistant, r.claim.claimed, r.finding.measured,
                      f"[{colour.get(v, 'dim')}]{v}[/]", r.finding.evidence)
    console = Console()
    if not console.is_terminal:  # a log file or pipe: do not squeeze the evidence into 80 columns
        console = Console(width=220)
    console.print(table)
    counts = {v: sum(r.finding.verdict == v for r in results) for v in ("✓", "✗", "~", "n.a.")}
    console.print(" ".join(f"{v} {n}" for v, n in counts.items()) + f"  ({len(results)} claims, {seconds:.1f} s)")


@cli_main
def main(argv=None):
    args = parse_args(argv)
    claims = select(args.only)
    if not claims:
        raise UserError(f"no claim id matches {args.only!r}; close: {', '.join(close_matches(args.only)) or 'none'}")
    ctx = Context(seed=args.seed, quick=args.quick, log_dir=args.log_dir)
    start = time.perf_counter()
    results = [check(c, ctx) for c in claims]
    if args.json:
        print(json.dumps([r.as_dict() for r in results], ensure_ascii=False, indent=1))
    else:
        render_table(results, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
