"""Which package may import which: the training code knows nothing of the claims audit (the audit
reads the training code's records and stages, and adds its column to the ladder table through an
entry point)."""

import ast
from pathlib import Path

import repro

PACKAGE = Path(repro.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved against its package."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(filter(None, (base, node.module)))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_the_resolver_sees_relative_imports():
    """The check below would pass vacuously if relative imports were missed: plan.py's are seen."""
    seen = _imported_modules(PACKAGE / "resnet" / "plan.py")
    assert "repro.resnet.ladder" in seen and "repro.runlog" in seen


def test_no_module_of_repro_resnet_imports_the_claims_audit():
    offenders = {str(path.relative_to(PACKAGE.parent)): sorted(m for m in _imported_modules(path)
                                                               if m == "repro.claims" or m.startswith("repro.claims."))
                 for path in sorted((PACKAGE / "resnet").rglob("*.py"))}
    assert {path: mods for path, mods in offenders.items() if mods} == {}


def test_the_llm_column_reaches_the_ladder_through_the_entry_point():
    from repro.resnet.ladder import extra_columns

    columns = extra_columns([])
    assert "LLM reported" in columns
    assert "rn-retry-a" in columns["LLM reported"]["final"]  # the registry's stage report for final
