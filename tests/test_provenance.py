"""Where results were measured (`lmstruct.provenance`) and where the shared sample data is (`paths.shared_data`)."""

import os
import pathlib
import re
import subprocess

from lmstruct import paths, provenance


def _git(repo: pathlib.Path, *args: str) -> str:
  environment = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
  environment["GIT_COMMITTER_EMAIL"] = "t@t"
  return subprocess.run(["git", *args], cwd=repo, env=environment, capture_output=True, text=True, check=True).stdout


def test_git_commit_is_the_short_head_and_marks_changed_tracked_files(tmp_path):
  _git(tmp_path, "init", "-q")
  (tmp_path / "a.txt").write_text("one")
  _git(tmp_path, "add", "a.txt")
  _git(tmp_path, "commit", "-q", "-m", "first")
  head = _git(tmp_path, "rev-parse", "--short", "HEAD").strip()
  assert provenance.git_commit(tmp_path) == head
  (tmp_path / "untracked.txt").write_text("not tracked: still clean")
  assert provenance.git_commit(tmp_path) == head
  (tmp_path / "a.txt").write_text("two")
  assert provenance.git_commit(tmp_path) == f"{head}+dirty"


def test_git_commit_outside_a_checkout_is_unknown(tmp_path):
  assert provenance.git_commit(tmp_path / "missing") == "unknown"


def test_host_and_its_one_line_description():
  host = provenance.host()
  assert host["cores"] == os.cpu_count() and set(host["isa"]) <= set(provenance.ISA_FLAGS)
  assert provenance.describe({"cpu": "AMD EPYC 7B13", "cores": 2}) == "AMD EPYC 7B13, 2 cores"
  assert (
    provenance.describe({"cpu": "X", "cores": 16, "devices": 1, "backend": "gpu", "device_kind": "NVIDIA H200"})
    == "X, 16 cores, 1 gpu device(s) (NVIDIA H200)"
  )
  assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", provenance.utc_date())
  assert re.fullmatch(r"\d{4}-\d\d-\d\d", provenance.utc_date(with_time=False))


def test_shared_data_is_the_environment_variable_else_beside_the_checkout(monkeypatch, tmp_path):
  monkeypatch.setenv(paths.SHARED_DATA_ENV, str(tmp_path))
  assert paths.shared_data() == tmp_path
  monkeypatch.delenv(paths.SHARED_DATA_ENV)
  checkout = pathlib.Path(paths.__file__).resolve().parents[1]
  assert paths.shared_data() == checkout.parent / "shared" / "data"
