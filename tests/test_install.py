"""A non-editable install in a fresh virtual environment outside the repository: the wheel holds
every module of ``ep_jax`` and ``ep-jax bench`` / ``ep-jax train`` run from a directory with
no source tree (no benchmarks/, no tests/, no torch needed). Offline: the new environment
borrows this interpreter's installed packages (jax, ...) and pip builds from a local copy."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Never copied into the build: VCS data, environments, caches, build outputs, runs.
IGNORED = (".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "runs",
           ".pytest_cache", ".hypothesis")


def _run(cmd, cwd, env, timeout=600):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _modules(package_dir: Path) -> set:
    return {p.relative_to(package_dir).as_posix() for p in package_dir.rglob("*.py")
            if "__pycache__" not in p.parts}


def test_wheel_install_outside_the_repository_runs_bench_and_train(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_CACHE_DIR="1")
    venv = tmp_path / "venv"
    # No bundled pip/setuptools (3.11's are older than this project's build needs): pip and
    # setuptools come with the borrowed packages below.
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    python = venv / "bin" / "python"
    new_site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         tmp_path, env).strip())

    # This interpreter's packages, minus its own ep_jax (an editable install: the
    # __editable__ .pth and finder pointing at the repository, and the dist-info), seen by the
    # new environment through a .pth file: jax etc. resolve, ep_jax only from the new install.
    view = tmp_path / "borrowed-site-packages"
    view.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(("ep_jax", "__editable__")) and entry.suffix != ".pth":
            (view / entry.name).symlink_to(entry)
    (new_site / "borrowed.pth").write_text(f"{view}\n")

    # A copy of the working tree: pip builds in the source directory (build/, *.egg-info) and
    # stale files in a build/ there would leak into the wheel.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*IGNORED), symlinks=True)
    _run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
          "--quiet", src], tmp_path, env)
    assert _modules(new_site / "ep_jax") == _modules(src / "ep_jax")
    assert {"bench.py", "app/cli.py"} <= _modules(new_site / "ep_jax")

    work = tmp_path / "work"
    work.mkdir()
    where = _run([python, "-c", "import ep_jax, ep_jax.bench; print(ep_jax.__file__)"], work, env)
    assert Path(where.strip()).resolve().is_relative_to(new_site.resolve()), where

    _run([venv / "bin" / "ep-jax", "bench", "--suite", "smoke", "--json", "out.json",
          "--markdown", "out.md"], work, env)
    doc = json.loads((work / "out.json").read_text())
    assert doc["rows"] and all(r["status"] == "ok" for r in doc["rows"]), doc["rows"]
    assert doc["environment"]["git"]["commit"] is None  # an installed package, not a checkout
    assert "| 64-32-10/B8/T3+2/gd/float32 |" in (work / "out.md").read_text()

    out = _run([venv / "bin" / "ep-jax", "train", "--epochs", "1", "--quiet", "--out", "run1"],
               work, env)
    summary = json.loads(out.strip().splitlines()[-1])
    assert 0.0 <= summary["test_error"] <= 1.0, summary
    saved = json.loads((work / "run1" / "summary.json").read_text())
    assert saved["test_error"] == summary["test_error"]
