"""The Colab notebooks run: each is executed with nbclient, offline, on CPU, at a tiny scale set through its
`LMSTRUCT_NB_*` parameters (read by its `parameters` cell); an error in any cell fails the test.

Each notebook runs in its own kernel from colab/, so its setup cell finds this checkout (no install, no network:
the CLIP vocabulary is already cached by `make`). The quickstart's runs are shared with the analysis notebook, which
evaluates one of them as its model.
"""

import json
import os
import pathlib
from typing import Any

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parents[1]
COLAB = REPO / "colab"
TINY_SCENES = {
  "LMSTRUCT_NB_VARIANT": "test",
  "LMSTRUCT_NB_STEPS": "2",
  "LMSTRUCT_NB_TRAIN_SIZE": "32",
  "LMSTRUCT_NB_EVAL_SIZE": "16",
}


def execute(name: str, devices: int, **params: str) -> nbformat.NotebookNode:
  """Runs every cell of colab/`name` in a fresh kernel on `devices` CPU devices with `params` in its environment;
  returns the executed notebook (nbclient raises CellExecutionError on the first failing cell)."""
  notebook = nbformat.read(COLAB / name, as_version=4)
  env = {
    **os.environ,
    **params,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
  }
  NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(COLAB)}}).execute(
    env=env
  )
  return notebook


def outputs(notebook: nbformat.NotebookNode, mime: str) -> list[Any]:
  """Every output of the notebook's code cells carrying `mime` ('text/plain' also collects streams)."""
  found = []
  for cell in notebook.cells:
    for output in cell.get("outputs", []):
      if output.get("output_type") == "stream" and mime == "text/plain":
        found.append(output["text"])
      elif mime in output.get("data", {}):
        found.append(output["data"][mime])
  return found


def test_the_setup_cell_comes_first_and_every_notebook_states_its_runtime():
  for path in sorted(COLAB.glob("*.ipynb")):
    notebook = nbformat.read(path, as_version=4)
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    assert code[0].startswith("# Setup:") and "LMSTRUCT_REPO = " in code[0], path.name
    assert any("parameters" in cell.metadata.get("tags", []) for cell in notebook.cells), path.name
    assert "**Runtime:**" in notebook.cells[0].source, path.name


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> tuple[nbformat.NotebookNode, pathlib.Path]:
  runs = tmp_path_factory.mktemp("quickstart")
  return execute(
    "quickstart.ipynb",
    devices=1,
    LMSTRUCT_NB_RUNS=str(runs),
    LMSTRUCT_NB_BATCH="8",
    LMSTRUCT_NB_OBJECTIVE="full",
    LMSTRUCT_NB_SWAPPED="gc",
    **TINY_SCENES,
  ), runs


def test_quickstart_trains_both_objectives_and_compares_them(quickstart):
  notebook, runs = quickstart
  for objective, regularisers in (("full", {"separation", "bridge", "geometric"}), ("gc", {"geometric"})):
    recorded = json.loads((runs / objective / "results.json").read_text())
    assert recorded["step"] == 2
    assert set(json.loads((runs / objective / "config.json").read_text())["objective"]["weights"]) == regularisers
  assert len(outputs(notebook, "image/png")) == 4  # PCA and gap shift of each run
  comparison = next(text for text in outputs(notebook, "text/markdown") if text.startswith("| metric | full | gc |"))
  gap = json.loads((runs / "gc" / "results.json").read_text())["results"]["structure"]["modality_gap"]
  assert "| modality gap | " in comparison and f"{gap:.3f} |" in comparison


def test_analysis_measures_real_clip_and_a_trained_run(quickstart, tmp_path, shared_data):
  _, runs = quickstart
  notebook = execute(
    "analysis.ipynb",
    devices=1,
    LMSTRUCT_NB_MODEL=str(runs / "full"),
    LMSTRUCT_NB_OUT=str(tmp_path),
    LMSTRUCT_SHARED_DATA=str(shared_data),
  )
  measured = json.loads((tmp_path / "structure.json").read_text())
  features = np.load(shared_data / "clip-features" / "features_clip.npy").astype(np.float64)
  zv, zt = (f / np.linalg.norm(f, axis=1, keepdims=True) for f in features)
  clip = measured["CLIP ViT-B/16"]
  np.testing.assert_allclose(clip["modality_gap"], np.linalg.norm(zv.mean(0) - zt.mean(0)), rtol=1e-6)
  cross = zv @ zt.T
  np.testing.assert_allclose(clip["cross_modal_symmetry_error"], np.mean((cross - cross.T) ** 2), rtol=1e-6)
  hits = np.mean([np.sum(row >= row[i]) == 1 for i, row in enumerate(cross)])  # image → its text ranked first
  np.testing.assert_allclose(clip["text_retrieval_recall@1"], hits, atol=1 / 500)  # float32 ranking, float64 here
  assert measured["random CLIP"]["mean_recall@1"] < 0.05 < clip["mean_recall@1"]
  run = measured[str(runs / "full")]
  assert {"modality_gap", "separability", "orthogonality_image", "orthogonality_text"} <= set(run)
  assert len(outputs(notebook, "image/png")) == 6  # PCA and gap shift: real CLIP, random CLIP, the run


def test_tpu_notebook_runs_the_ring_update_and_plans_on_cpu(tmp_path):
  notebook = execute(
    "tpu.ipynb",
    devices=8,
    LMSTRUCT_NB_WORKDIR=str(tmp_path / "ring"),
    LMSTRUCT_NB_BATCH_PER_DEVICE="2",
    LMSTRUCT_NB_PLAN_DEVICES="8",
    LMSTRUCT_NB_PLAN_CONFIG="configs/paper_cc3m.py:variant=test,devices=8",
    **TINY_SCENES,
  )
  printed = "".join(outputs(notebook, "text/plain"))
  assert "backend: cpu | 8 devices" in printed and "mesh: {'data': 8}" in printed
  assert "skipped: the backend is cpu, not tpu" in printed
  config = json.loads((tmp_path / "ring" / "config.json").read_text())
  assert config["objective"]["impl"] == "ring" and config["data"]["global_batch_size"] == 16
  records = [json.loads(line) for line in (tmp_path / "ring" / "metrics.jsonl").read_text().splitlines()]
  losses = [record["loss/total"] for record in records if "loss/total" in record]
  assert len(losses) == 2 and np.isfinite(losses).all()
  assert "plan of configs/paper_cc3m.py:variant=test,devices=8 on 8 devices" in printed and "fits:" in printed
