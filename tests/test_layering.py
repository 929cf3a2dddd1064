"""Import direction: api -> services -> trainer core, never back; the API does not load torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at top level or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def _offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        for mod in _imports(path):
            if mod.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(REPO)} imports {mod}")
    return bad


def test_trainer_imports_neither_services_nor_api():
    assert _offenders("trainer", ("services", "api")) == []


def test_services_do_not_import_api():
    assert _offenders("services", ("api",)) == []


def test_api_main_does_not_import_torch():
    code = (
        "import sys, api.main\n"
        "heavy = sorted(m for m in ('torch', 'torchrec', 'fbgemm_gpu', 'ray') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"importing api.main loads {r.stdout.strip()}"


def test_api_uses_no_private_name_of_trainer():
    for path in sorted((REPO / "api").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trainer"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.relative_to(REPO)} imports {private} from {node.module}"
