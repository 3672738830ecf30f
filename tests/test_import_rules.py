"""Import layering: the tests never import the benchmark scripts (they import the tests'
references), and the ep_jax core (everything outside ``ep_jax/app/``) depends only on the JAX
stack, numpy and the standard library, so the library installs and runs without the
application's or the tests' packages. Every import counts, also those inside functions."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE_ALLOWED = {"jax", "jaxlib", "flax", "optax", "chex", "numpy", "ep_jax"}


def imported_modules(path: Path, package: str) -> list:
    """``(line, module, names)`` of every import in the file (``names``: what a ``from``
    import takes), relative imports resolved against ``package`` (the file's own, dotted)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module
            if node.level:
                parts = package.split(".")
                module = ".".join(parts[: len(parts) - node.level + 1] + ([module] if module else []))
            out.append((node.lineno, module, tuple(a.name for a in node.names)))
    return out


def core_violations(root: Path) -> list:
    """``path:line: module`` for each import of a core module (``ep_jax`` outside ``ep_jax/app``)
    that is neither allowed nor the standard library, and for each import of ``ep_jax.app``."""
    bad = []
    for path in sorted((root / "ep_jax").rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[:2] == ("ep_jax", "app"):
            continue
        package = ".".join(rel.parts[:-1])  # a module's package; __init__.py: its own
        for line, module, names in imported_modules(path, package):
            top = module.split(".")[0]
            app = any(m == "ep_jax.app" or m.startswith("ep_jax.app.")
                      for m in [module] + [f"{module}.{n}" for n in names])
            if app or (top not in CORE_ALLOWED and top not in sys.stdlib_module_names):
                bad.append(f"{rel}:{line}: {module}")
    return bad


def test_the_checker_flags_violations(tmp_path):
    pkg = tmp_path / "ep_jax"
    (pkg / "app").mkdir(parents=True)
    (pkg / "sub").mkdir()
    (pkg / "ok.py").write_text("import os\nimport jax.numpy as jnp\nfrom . import sub\n")
    (pkg / "sub" / "mod.py").write_text(
        "def f():\n    import torch\n    from ..app import cli\n    from ep_jax import app\n")
    (pkg / "app" / "cli.py").write_text("import matplotlib\n")  # the application may
    mod = Path("ep_jax/sub/mod.py")
    assert core_violations(tmp_path) == [f"{mod}:2: torch", f"{mod}:3: ep_jax.app", f"{mod}:4: ep_jax"]


def test_core_modules_import_only_the_jax_stack_numpy_and_the_stdlib():
    bad = core_violations(ROOT)
    assert not bad, "core modules importing outside jax/jaxlib/flax/optax/chex/numpy/" \
                    "stdlib/ep_jax (or importing ep_jax.app):\n" + "\n".join(bad)


def test_no_test_imports_the_benchmark_scripts():
    bad = [f"{path.relative_to(ROOT)}:{line}: {module}"
           for path in sorted((ROOT / "tests").rglob("*.py"))
           for line, module, _ in imported_modules(path, ".".join(path.relative_to(ROOT).parts[:-1]))
           if module.split(".")[0] == "benchmarks"]
    assert not bad, "tests import benchmarks/ (run its scripts as subprocesses instead):\n" + "\n".join(bad)
