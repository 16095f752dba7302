"""The README's support table is the one tools/support_table.py renders from tests/family_cases.py, and
family_cases names only families and tests that exist."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import family_cases

ROOT = Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("support_table", ROOT / "tools" / "support_table.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["support_table"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_readme_holds_the_rendered_table():
    tool = _tool()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = tool.render()
    assert table in readme, "README.md's support table is out of date: run python tools/support_table.py"
    assert tool.main(["--check"]) == 0


def test_every_row_is_a_known_family_and_the_tests_use_the_cases():
    fam = _tool()._families()
    assert set(family_cases.ROWS) <= set(fam.FAMILIES)
    assert set(fam.LISTED) == set(family_cases.ROWS), "a family listed to users has no row (or the other way)"
    src = (ROOT / "tests" / "test_families.py").read_text(encoding="utf-8")
    tree = ast.parse(src)
    params = [d for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
              for d in n.decorator_list if isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "parametrize"]
    uses = {ast.unparse(d.args[1]) for d in params}
    assert "list(CASES)" in uses and "TEXT_ENCODER_TESTED" in uses
    # the legacy rows: the families tests/test_model_probe.py parametrizes
    probe_src = (ROOT / "tests" / "test_model_probe.py").read_text(encoding="utf-8")
    for name in ("sd3", "flux", "sd15", "sdxl"):
        assert f'"{name}"' in probe_src
