"""Test-suite set-up shared by every test.

Eight fake CPU devices are configured before JAX starts, so multi-device behaviour (data parallel, FSDP, the ring
objective, sharded evaluation) is exercised on any machine. Real sample data beside the repository is found through
one configurable path: ``LMSTRUCT_SHARED_DATA`` (default ``../shared/data`` next to the checkout).
"""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from lmstruct.paths import shared_data as configured_shared_data  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = configured_shared_data()


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """Root of the read-only real sample data (COCO-mini, VL fixtures)."""
  if not SHARED_DATA.is_dir():
    raise FileNotFoundError(f"shared test data not found at {SHARED_DATA}; set LMSTRUCT_SHARED_DATA to its location")
  return SHARED_DATA
