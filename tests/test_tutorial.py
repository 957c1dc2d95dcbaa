"""docs/tutorial.ipynb runs from top to bottom (CI executes it, so it never rots), and the
public API it uses is exported from topicdyn with docstrings."""
import subprocess
import sys
from pathlib import Path

import nbclient
import nbformat

import topicdyn

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"


def test_the_tutorial_notebook_runs_and_its_probe_check_holds(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "commit the notebook without outputs"
    # its runs/ directory goes under tmp_path, never into the repository
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # a failing cell (e.g. the by-hand probe's assert) raises here
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
    assert "by hand" in text and "logged" in text
    assert len(list((tmp_path / "runs").glob("tutorial-*/probes.jsonl"))) == 1


def test_public_api_is_exported_with_docstrings_and_imports_no_jax():
    for name in topicdyn.__all__:
        obj = getattr(topicdyn, name)
        assert (obj.__doc__ or "").strip(), f"topicdyn.{name} has no docstring"
    code = "import sys, topicdyn; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"  # `import topicdyn` stays light (the CLI's startup)
