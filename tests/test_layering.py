"""Import direction: cli -> (api, bench) -> services -> trainer core, never back; the API
does not load torch.

An import counts wherever it is written (top level or inside a function), and so does a
dynamic one with a literal module name: ``importlib.import_module("x")``,
``import_module("x")`` and ``__import__("x")``. Only the top-level ``cli`` package (the
``rectrain`` command) may compose the layers' command groups."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


_DYNAMIC = {"import_module", "__import__"}  # importlib.import_module / import_module / __import__


def _dynamic_import(node: ast.Call) -> str | None:
    """The module a call imports by a literal name, if it is such a call."""
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    if name not in _DYNAMIC or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    return None


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at top level or inside functions, statically or by
    a dynamic import of a literal name (also one named in a literal tuple/list that a
    loop feeds to a dynamic import: the old plugin list)."""
    out: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    dynamic_in_loop = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
        elif isinstance(node, ast.Call):
            mod = _dynamic_import(node)
            if mod is not None:
                out.add(mod)
            elif isinstance(node.func, ast.Attribute | ast.Name) and (
                getattr(node.func, "attr", None) in _DYNAMIC or getattr(node.func, "id", None) in _DYNAMIC
            ):
                dynamic_in_loop = True
    if dynamic_in_loop:  # import_module(mod) over a literal list of module names
        for node in ast.walk(tree):
            if isinstance(node, ast.Tuple | ast.List) and node.elts:
                names = [e.value for e in node.elts if isinstance(e, ast.Constant)]
                if len(names) == len(node.elts) and all(
                    isinstance(n, str) and n.replace(".", "").replace("_", "").isalnum() and "." in n
                    for n in names
                ):
                    out |= set(names)
    return out


def _offenders_in(paths: list[Path], forbidden: tuple[str, ...], root: Path = REPO) -> list[str]:
    bad = []
    for path in paths:
        for mod in _imports(path):
            if mod.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(root)} imports {mod}")
    return sorted(bad)


def _offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return _offenders_in(sorted((REPO / package).rglob("*.py")), forbidden)


def test_trainer_imports_no_layer_above():
    assert _offenders("trainer", ("services", "api", "bench", "cli")) == []


def test_services_import_no_layer_above():
    assert _offenders("services", ("api", "bench", "cli")) == []


def test_api_and_bench_do_not_import_the_cli_package():
    assert _offenders("api", ("bench", "cli")) == []
    assert _offenders("bench", ("api", "cli")) == []


def test_the_checker_sees_dynamic_and_nested_imports(tmp_path):
    """The checker itself: every spelling of an upward edge is caught."""
    pkg = tmp_path / "trainer"
    pkg.mkdir()
    spellings = {
        "static.py": "import services.cli\n",
        "nested.py": "def f():\n    from api.main import create_app\n",
        "importlib_call.py": "import importlib\nimportlib.import_module('services.cli')\n",
        "bare_call.py": "from importlib import import_module\nimport_module('bench.cli')\n",
        "dunder.py": "def f():\n    return __import__('cli.main')\n",
        "plugins.py": (
            "import importlib\n_PLUGINS = ('services.cli', 'bench.cli')\n"
            "for m in _PLUGINS:\n    importlib.import_module(m)\n"
        ),
        "fine.py": "import importlib\nimportlib.import_module('trainer.spec')\nx = __import__('types')\n",
    }
    for name, code in spellings.items():
        (pkg / name).write_text(code)
    bad = _offenders_in(sorted(pkg.glob("*.py")), ("services", "api", "bench", "cli"), root=tmp_path)
    assert bad == [
        "trainer/bare_call.py imports bench.cli",
        "trainer/dunder.py imports cli.main",
        "trainer/importlib_call.py imports services.cli",
        "trainer/nested.py imports api.main",
        "trainer/plugins.py imports bench.cli",
        "trainer/plugins.py imports services.cli",
        "trainer/static.py imports services.cli",
    ]


def test_the_old_plugin_loader_would_fail(tmp_path):
    """trainer/cli.py as it was (``importlib.import_module`` over ``_PLUGINS``) is an
    upward edge the checker reports."""
    old = tmp_path / "trainer" / "cli.py"
    old.parent.mkdir()
    old.write_text(
        'import importlib\n_PLUGINS = ("services.cli", "bench.cli")\n\n\ndef build_parser(sub):\n'
        "    for mod in _PLUGINS:\n        m = importlib.import_module(mod)\n        m.register(sub)\n"
    )
    assert _offenders_in([old], ("services", "bench"), root=tmp_path) == [
        "trainer/cli.py imports bench.cli",
        "trainer/cli.py imports services.cli",
    ]


def test_the_study_cli_uses_no_private_name_of_another_module():
    """services/study_cli.py shares the client helpers through services/cli_common.py's
    public names, not services/cli.py's private ones."""
    path = REPO / "services" / "study_cli.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("services"):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"services/study_cli.py imports {private} from {node.module}"


def test_the_console_script_is_the_top_level_cli():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["rectrain"] == "cli.main:main"
    assert "cli*" in project["tool"]["setuptools"]["packages"]["find"]["include"]


def test_api_main_does_not_import_torch():
    from tests.heavy_imports import heavy_imports

    assert heavy_imports("api.main") == []


def test_api_uses_no_private_name_of_trainer():
    for path in sorted((REPO / "api").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trainer"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.relative_to(REPO)} imports {private} from {node.module}"
