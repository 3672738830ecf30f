"""The documentation site: ``mkdocs build --strict`` passes offline and every public name is rendered.

Public names come from the package itself, not from a list kept by hand: for every public module
(no ``_``-prefixed part), its ``__all__`` if it has one, else its public top-level definitions
(functions, classes, assignments). A name counts as documented when the built HTML holds the
anchor mkdocstrings emits for it (``id="ep_jax.rules.ep_gradient"``) on its module's page, or at
the object's own definition (re-exports such as ``ep_jax.relax``). A module without a reference
page (``docs/reference/<module>.md`` holding ``::: <module>``, listed in ``mkdocs.yml``'s nav)
fails with its name.
"""

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ep_jax

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"


def public_modules() -> list[str]:
    names = ["ep_jax"]
    for info in pkgutil.walk_packages(ep_jax.__path__, "ep_jax."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def _source(module: str) -> Path:
    return Path(importlib.import_module(module).__file__)


def public_names(module: str) -> list[str]:
    """``__all__`` (as written, ``*``-spreads of dict literals included), else the module's own
    public top-level definitions."""
    tree = ast.parse(_source(module).read_text())
    mod = importlib.import_module(module)
    if hasattr(mod, "__all__"):
        return sorted(set(mod.__all__))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            # Only ``NAME = ...``: a tuple unpacking (``A, B = 1, 2``) cannot carry a docstring
            # and mkdocstrings does not render its names.
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return sorted(n for n in names if not n.startswith("_"))


def canonical(module: str, name: str) -> str | None:
    """Where ``module.name`` is defined: ``obj.__module__.__qualname__`` for functions and
    classes, else the module a ``from X import name`` in ``module`` points to (followed)."""
    obj = getattr(importlib.import_module(module), name, None)
    qual = getattr(obj, "__qualname__", None)
    home = getattr(obj, "__module__", None)
    if isinstance(qual, str) and isinstance(home, str) and home.startswith("ep_jax"):
        return f"{home}.{qual}"
    tree = ast.parse(_source(module).read_text())
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ep_jax"):
            if any(a.name == name and a.asname is None for a in node.names):
                return canonical(node.module, name) or f"{node.module}.{name}"
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    problems = [l for l in proc.stderr.splitlines() if l.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(problems or [proc.stderr[-3000:]])
    return out


def test_every_public_module_has_a_reference_page():
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = []
    for module in public_modules():
        page = REFERENCE / f"{module}.md"
        if not page.exists() or f"::: {module}" not in page.read_text():
            missing.append(f"{module}: add docs/reference/{module}.md holding '::: {module}'")
        elif f"reference/{module}.md" not in nav:
            missing.append(f"{module}: list reference/{module}.md in mkdocs.yml's nav")
    assert not missing, "modules without a reference page:\n" + "\n".join(missing)
    stale = sorted({p.stem for p in REFERENCE.glob("*.md")} - set(public_modules()))
    assert not stale, f"reference pages of modules that do not exist: {stale}"


def test_site_builds_strict_and_renders_every_public_name(site):
    anchors = set()
    for page in (site / "reference").glob("*.html"):
        anchors |= set(re.findall(r'id="(ep_jax[\w.]*)"', page.read_text(encoding="utf-8")))
    assert "ep_jax.rules.ep_gradient" in anchors  # the check sees mkdocstrings' anchors at all
    lazy = getattr(ep_jax, "_APP", {})  # ep_jax re-exports the app layer lazily
    missing = []
    for module in public_modules():
        for name in public_names(module):
            home = canonical(module, name)
            if module == "ep_jax" and name in lazy:
                home = f"{lazy[name]}.{name}"
            if f"{module}.{name}" not in anchors and home not in anchors:
                missing.append(f"{module}.{name}" + (f" (defined at {home})" if home else ""))
    assert not missing, "public names without a rendered reference entry:\n" + "\n".join(missing)


def test_guide_pages_render(site):
    for page in ("index", "CONVENTIONS", "TRAINING", "EXACTNESS", "RELIABILITY", "BENCHMARKS",
                 "EXTENDING", "ARCHITECTURE"):
        html = (site / f"{page}.html").read_text(encoding="utf-8")
        assert "<h1" in html, page
    bench = (site / "BENCHMARKS.html").read_text(encoding="utf-8")
    assert "include benchmarks/results" not in bench  # the hook replaced every include
    assert "<table>" in bench
    # Offline: no page loads a script or stylesheet from the network.
    for page in site.rglob("*.html"):
        assert not re.search(r'<(script|link)[^>]*(src|href)="https?://', page.read_text(encoding="utf-8")), page


def test_the_home_page_api_example_runs_as_written(capsys):
    text = (ROOT / "docs" / "index.md").read_text()
    section = text.split("## The API in 30 lines", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    readme = (ROOT / "README.md").read_text().split("## API in 30 lines", 1)[1]
    assert readme.split("```python\n", 1)[1].split("```", 1)[0] == code, "README's API example differs"
    exec(compile(code, "docs/index.md", "exec"), {"__name__": "docs_example"})
    out = capsys.readouterr().out
    error = float(re.search(r"test error ([\d.]+)%", out).group(1))
    assert error < 15.0, out  # three epochs on digits: far from chance (90%)
