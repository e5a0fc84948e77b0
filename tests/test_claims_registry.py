import json
import re
from pathlib import Path

import pytest

from repro.claims import select
from repro.claims.__main__ import main
from repro.claims.registry import CLAIMS, catalogue_ids

CATALOGUE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "llm-claims.md"
# The catalogue's claim-table ids, kept here so the test works without ../shared.
CATALOGUE_IDS = {
    "q1a-rms", "q1a-const", "q1a-gauss", "q1b-exp-lechat", "q1b-exp", "q1b-scaling", "q1b-const", "q1b-pathwise",
    "q1b-gmag", "q1c-why-d1", "q3a-fig1", "q3b-table3", "q3b-vanish", "q3c-desid", "q3c-rmsrms", "q3c-entryrms",
    "q3c-upper", "q3c-lower", "q4a-score", "q4b-F", "q4c-reparam", "q4c-stein", "q4d-score", "q4d-baseline",
    "q4d-var", "q4e-general", "q5a-fwd", "q5b-loadmem", "q5c-disk", "pca-foc", "pca-foc-2", "pca-opt",
    "pca-false-id", "ae-layers", "ae-loss", "ae-comp", "ae-ortho", "mt-train", "mt-eval", "rn-hallu", "rn-3x",
    "rn-learn1", "rn-retry-a", "rn-retry-c", "rn-retry-b",
}


def test_registry_covers_hardcoded_catalogue():
    assert CATALOGUE_IDS - catalogue_ids() == set()


def test_registry_covers_catalogue_file():
    if not CATALOGUE.exists():
        pytest.skip("../shared/reference/llm-claims.md not present")
    ids = set(re.findall(r"^\| ([a-z0-9]+(?:-[a-zA-Z0-9]+)+) \|", CATALOGUE.read_text(), flags=re.M))
    assert len(ids) >= 40
    assert ids - catalogue_ids() == set()


def test_ids_unique_and_multi_answer_rows_split_per_assistant():
    assert len({c.id for c in CLAIMS}) == len(CLAIMS)
    for row, n in (("q1b-const", 4), ("q5b-loadmem", 4), ("q5c-disk", 3), ("q3b-table3", 4)):
        assert len([c for c in CLAIMS if c.catalogue_id == row]) == n


def test_only_exact_then_prefix():
    assert [c.id for c in select("pca-foc")] == ["pca-foc", "pca-foc/summary-eq1"]
    assert {c.id for c in select("q5c")} == {"q5c-disk", "q5c-disk/lechat", "q5c-disk/gemini"}


def test_unknown_id_is_one_line_error_with_close_matches(capsys):
    assert main(["--only", "q5d-dsk"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error:") and "q5" in err


def test_json_output_parses_and_has_fields(capsys):
    assert main(["--only", "q5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["id"]: r["verdict"] for r in rows}["q5c-disk/lechat"] == "✗"
    assert all({"id", "assistant", "claimed", "measured", "verdict", "evidence"} <= r.keys() for r in rows)


def test_not_checkable_rows_say_why(capsys):
    assert main(["--only", "rn-learn1", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["verdict"] == "n.a." and "prose" in row["evidence"]
