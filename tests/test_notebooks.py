"""The notebooks in examples/ run headless from top to bottom (small settings:
``EP_JAX_NOTEBOOK_FAST=1``), and the XOR explorer's slider callback re-trains and redraws.

Each notebook runs in a fresh kernel of this interpreter (a kernelspec written to a temporary
``JUPYTER_PATH``, so the venv's ``python`` runs it whatever kernels the machine has). The
notebooks are stored without outputs; this test never writes them back.
"""

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
KERNEL = "ep-jax-test"


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ep_jax tests", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("EP_JAX_NOTEBOOK_FAST", "1")
    monkeypatch.delenv("JAX_ENABLE_X64", raising=False)


def execute(path: Path, extra_cells=()):
    nb = nbformat.read(path, as_version=4)
    nb.cells.extend(nbformat.v4.new_code_cell(src) for src in extra_cells)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=600,
                                     resources={"metadata": {"path": str(EXAMPLES)}})
    client.execute()
    return nb


def test_there_are_the_three_notebooks_stored_without_outputs():
    assert [p.name for p in NOTEBOOKS] == [
        "01_tutorial.ipynb", "02_xor_explorer.ipynb", "03_gradient_check.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: outputs stored"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["01_tutorial.ipynb", "03_gradient_check.ipynb"])
def test_notebook_runs(kernel_env, name):
    nb = execute(EXAMPLES / name)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert images, f"{name} drew no figure"


@pytest.mark.slow
def test_xor_explorer_callback_retrains_and_redraws(kernel_env):
    check = """
import numpy as np
before = {k: np.array(v) for k, v in last.items() if k in ("curves", "surface", "outputs")}
figure_before = last["figure"]
# The test plays the front end: new slider and menu values, then the callback itself.
for control in [*sliders.values(), rule_menu]:
    control.unobserve(update, names="value")
sliders["W0[0,0]"].value = -1.5
sliders["W0[1,1]"].value = 1.8
sliders["b1[1]"].value = 0.7
rule_menu.value = "chl"
after = update()
assert after is not None and after["rule"] == "chl"
assert last["figure"] is not figure_before, "no new figure drawn"
assert after["curves"].shape == before["curves"].shape == (EPOCHS, 3)
assert not np.allclose(after["curves"], before["curves"]), "training curves unchanged"
assert not np.allclose(after["surface"], before["surface"]), "decision surface unchanged"
p = params_from_sliders()
assert float(p["layer_0"]["kernel"][0, 0]) == -1.5 and float(p["layer_1"]["bias"][1]) == np.float32(0.7)
print("CALLBACK-OK")
"""
    nb = execute(EXAMPLES / "02_xor_explorer.ipynb", [check])
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert "CALLBACK-OK" in text
