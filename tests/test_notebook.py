"""The walkthrough notebook executes top to bottom on CPU, with its pictures, in under 10 minutes."""
from __future__ import annotations

import os
import time

import pytest

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks", "walkthrough.ipynb")


@pytest.mark.slow
def test_walkthrough_executes():
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []  # run from scratch, not from the stored outputs
    t0 = time.time()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
    assert time.time() - t0 < 600
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 5  # two heatmaps, per-layer losses, loss curves, the report chart
