"""Where and when a result was measured: the checkout's commit, the machine and the date that every benchmark,
study and table records beside its numbers.

Standard library only at import time (JAX is imported by :func:`accelerator` alone), so a benchmark's driver can
describe its machine before it configures JAX.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import subprocess
from typing import Any

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
#: The CPU feature flags that decide matmul speed on x86.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def git_commit(checkout: str | os.PathLike = REPO_ROOT) -> str:
  """Short commit of `checkout`, with '+dirty' when tracked files differ from it; 'unknown' outside git."""
  try:
    commit = subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no"], cwd=checkout, capture_output=True, text=True, check=True
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return commit + ("+dirty" if dirty else "")


def _cpuinfo() -> dict[str, str]:
  """The first value of each key of /proc/cpuinfo ({} where the file is absent)."""
  try:
    lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
  except OSError:
    return {}
  info: dict[str, str] = {}
  for line in lines:
    key, _, value = line.partition(":")
    info.setdefault(key.strip(), value.strip())
  return info


def host() -> dict[str, Any]:
  """{'cpu': model name, 'cores', 'isa': the ISA_FLAGS the CPU has, 'python', 'loadavg': 1, 5, 15-minute load
  averages (other work on a shared machine shows up here)}."""
  info = _cpuinfo()
  flags = set(info.get("flags", "").split())
  try:
    load = [round(x, 2) for x in os.getloadavg()]
  except OSError:
    load = []
  return {
    "cpu": info.get("model name") or platform.processor() or platform.machine(),
    "cores": os.cpu_count(),
    "isa": [flag for flag in ISA_FLAGS if flag in flags],
    "python": platform.python_version(),
    "loadavg": load,
  }


def accelerator() -> dict[str, Any]:
  """{'jax': version, 'backend', 'device_kind', 'devices': count} of the devices JAX sees (initialises JAX)."""
  import jax

  devices = jax.devices()
  return {
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "device_kind": devices[0].device_kind,
    "devices": len(devices),
  }


def describe(machine: dict[str, Any]) -> str:
  """One line of `host()` (optionally merged with `accelerator()`): 'AMD EPYC 7B13, 2 cores, 1 cpu device(s)'."""
  line = f"{machine['cpu']}, {machine['cores']} cores"
  if "devices" in machine:
    line += f", {machine['devices']} {machine['backend']} device(s) ({machine['device_kind']})"
  return line


def utc_date(with_time: bool = True) -> str:
  """The current UTC date, 'YYYY-MM-DD HH:MM UTC' (or 'YYYY-MM-DD')."""
  now = datetime.datetime.now(datetime.timezone.utc)
  return now.strftime("%Y-%m-%d %H:%M UTC" if with_time else "%Y-%m-%d")
