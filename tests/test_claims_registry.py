import inspect
import json
import re
from pathlib import Path

import pytest

import repro.claims
from repro.claims import select
from repro.claims.__main__ import main
from repro.claims.checkers.common import YES, Finding
from repro.claims.checkers import blog, estimators, mt, mup, mup_sweep, pca, records, remat, resnet
from repro.claims.registry import CLAIMS, Claim

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
# Which module holds a claim's checker, by id prefix (the longest matching prefix wins): the table in
# repro/claims/registry.py's docstring.
CHECKER_MODULES = {
    "q1": mup, "q3a": mup_sweep, "q3b": mup, "q3c": mup, "q4": estimators, "q5": remat,
    "pca": pca, "ae": pca, "mt": mt,
    "rn-3x": blog, "rn-learn1": blog, "rn-blog": blog, "rn-rec": records, "rn": resnet,
}


def checker_module(claim_id: str):
    """The module that holds the checker of ``claim_id`` (longest matching prefix)."""
    prefix = max((p for p in CHECKER_MODULES if claim_id.startswith(p)), key=len)
    return CHECKER_MODULES[prefix]


def catalogue_ids() -> set[str]:
    return {c.catalogue_id for c in CLAIMS}


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
    # q1b-const: 4 assistants + ChatGPT's ≈ ; q5b-loadmem: ChatGPT answered twice; q5a-fwd: Grok's 30 per iteration
    for row, n in (("q1b-const", 5), ("q5b-loadmem", 5), ("q5c-disk", 3), ("q3b-table3", 4), ("q5a-fwd", 3)):
        assert len([c for c in CLAIMS if c.catalogue_id == row]) == n, row


def test_checkers_are_functions_in_the_module_their_id_names():
    for c in CLAIMS:
        assert inspect.isfunction(c.checker), c.id
        assert inspect.getmodule(c.checker) is checker_module(c.id), c.id
    assert checker_module("rn-3x").__name__.endswith(".blog")
    assert checker_module("rn-retry-a").__name__.endswith(".resnet")
    assert checker_module("q3a-fig1/grok").__name__.endswith(".mup_sweep")
    assert set(CHECKER_MODULES.values()) == {inspect.getmodule(c.checker) for c in CLAIMS}


def test_only_exact_then_prefix():
    assert [c.id for c in select("pca-foc")] == ["pca-foc", "pca-foc/summary-eq1"]
    assert {c.id for c in select("q5c")} == {"q5c-disk", "q5c-disk/lechat", "q5c-disk/gemini"}


def test_unknown_id_is_one_line_error_with_close_matches(capsys):
    assert main(["--only", "q5d-dsk"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error:") and "q5" in err


def test_missing_blog_text_is_a_usage_error(tmp_path, capsys):
    assert main(["--only", "rn-learn1", "--blog-text", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt" in capsys.readouterr().err


def test_json_output_has_verdict_and_basis(capsys):
    assert main(["--only", "q5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["id"]: r["verdict"] for r in rows}["q5c-disk/lechat"] == "✗"
    assert all({"id", "assistant", "claimed", "measured", "verdict", "basis", "evidence"} <= r.keys() for r in rows)
    assert {r["basis"] for r in rows} == {"computed"}  # every Q5 answer is counted on the model


def _broken(claim, ctx):
    raise RuntimeError("boom in the checker")


def _no_basis(claim, ctx):
    return Finding("1", YES, "forgot to say what the verdict rests on")


@pytest.fixture
def broken_registry(monkeypatch):
    claims = (Claim("zz-broken", "t", "Nobody", "q", "c", _broken), Claim("zz-nobasis", "t", "Nobody", "q", "c", _no_basis),
              *[c for c in CLAIMS if c.id == "q5c-disk"])
    monkeypatch.setattr(repro.claims, "CLAIMS", claims)


def test_a_raising_checker_is_an_error_counted_apart_and_fails_the_cli(broken_registry, capsys):
    assert main(["--only", "zz"]) == 1
    out, err = capsys.readouterr()
    assert "boom in the checker" in out and "basis None" in out
    assert "n.a. 0 error 2" in out
    assert "zz-broken" in err and "zz-nobasis" in err


def test_error_rows_in_json_and_the_others_still_checked(broken_registry, capsys):
    assert main(["--only", "", "--json"]) == 1
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["zz-broken"]["verdict"] == "error" and "RuntimeError" in rows["zz-broken"]["evidence"]
    assert rows["q5c-disk"]["verdict"] == "✓" and rows["q5c-disk"]["basis"] == "computed"


def test_table_shows_the_basis_column_and_counts(capsys):
    assert main(["--only", "q5b"]) == 0
    out = capsys.readouterr().out
    assert "basis" in out and "computed" in out
    assert re.search(r"✓ 2 ✗ 3 ~ 0 n\.a\. 0 error 0; basis computed 5, text 0, judgement 0", out)
