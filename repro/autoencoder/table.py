"""Formatting of the autoencoder's check values, shared by the CLI table and the report."""

from __future__ import annotations


def fmt_value(value) -> str:
    """4 significant digits for numbers (0.0009999999999999996 -> 0.001); strings as they are;
    '-' (no predicted value: the tolerance column holds a bound) and None as an em dash."""
    if value is None or value == "-":
        return "—"
    if isinstance(value, str):
        return value
    if value == 0:
        return "0"
    return f"{value:.4g}"


def fmt_lams(lams) -> str:
    return ", ".join(fmt_value(float(v)) for v in lams)


def markdown_sections(records) -> list[str]:
    """Markdown lines for ``repro.report``: per run a summary line and its checks."""
    out = ["## Autoencoder checks", ""]
    for rec in records:
        checks = rec.get("checks", [])
        counts = {v: sum(c.get("verdict") == v for c in checks) for v in ("PASS", "FAIL", "INFO")}
        top = rec.get("spectrum_top") or []
        k = rec.get("k")
        lams = rec.get("lambdas") or [rec.get("lambda")]
        ratios = (f" (λ/s_k = {fmt_lams(v / top[k - 1] for v in lams)})"
                  if k and len(top) >= k and top[k - 1] and None not in lams else "")
        seconds = rec.get("seconds")
        out += [f"Run `{rec.get('run_id')}`: {rec.get('dataset')}, m={rec.get('m')}, n={rec.get('n')}, k={k}, "
                f"λ = {fmt_lams(v for v in lams if v is not None)}{ratios}, optimizer {rec.get('optimizer', 'gd')}, "
                f"trainer {rec.get('trainer')}: {counts['PASS']} pass, {counts['FAIL']} fail, {counts['INFO']} info"
                + (f", {seconds:.1f} s" if isinstance(seconds, (int, float)) else "") + ".", "",
                "| check | measured | predicted | tolerance | verdict |", "|---|---|---|---|---|"]
        for c in checks:
            cells = (c.get("name"), fmt_value(c.get("measured")), fmt_value(c.get("predicted")), c.get("tolerance"),
                     c.get("verdict"))
            out.append("| " + " | ".join(str(v).replace("|", "\\|") for v in cells) + " |")
        out.append("")
    return out
