"""lmstruct.multihost on 2 JAX processes on localhost (2 CPU devices each): rows of unequal counts and every dtype
gathered bit for bit in process order, and each process's rows of a global batch."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]

WORKER = '''
import json, sys
import jax
import numpy as np
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from lmstruct import multihost
from lmstruct.data import pipeline
from lmstruct.train.sharding import batch_sharding, make_mesh

p = jax.process_index()
nan_payload = np.array([0x7FF8000000000001 + p], np.uint64).view(np.float64)
local = {
    "floats": np.concatenate([nan_payload, np.arange(2 * p, dtype=np.float64)]),  # 1 and 3 rows
    "flags": np.array([[True, False]] * (3 - 2 * p)),  # 3 and 1 rows
    "ids": np.array([2**40 + p] * p, np.int64),  # 0 and 1 rows
}
gathered = {k: multihost.allgather_rows(v) for k, v in local.items()}
batch = np.arange(8 * p, 8 * p + 8, dtype=np.int32).reshape(4, 2)  # this process's 4 rows of a global [8, 2]
global_batch = jax.make_array_from_process_local_data(batch_sharding(make_mesh()), batch)
out = {"floats_bits": gathered["floats"].view(np.uint64).tolist(), "flags": gathered["flags"].tolist(),
       "ids": gathered["ids"].tolist(), "ids_dtype": str(gathered["ids"].dtype),
       "rows": multihost.process_rows(global_batch).tolist(),
       "row_count": multihost.process_row_count(global_batch),
       "json": pipeline._allgather_json({"process": p, "text": "x" * (5 * p)})}
print("RESULT " + json.dumps(out))
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_allgather_rows_and_process_rows_on_two_processes():
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  address = f"127.0.0.1:{_free_port()}"
  processes = [subprocess.Popen([sys.executable, "-c", WORKER, address, str(i)], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  results = []
  for process in processes:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    results.append(json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:]))
  nan_bits = [0x7FF8000000000001, 0x7FF8000000000002]
  one, two = (np.float64(x).view(np.uint64).item() for x in (0.0, 1.0))
  for process, result in enumerate(results):
    assert result["floats_bits"] == [nan_bits[0], nan_bits[1], one, two]  # process 0's row, then process 1's 3
    assert result["flags"] == [[True, False]] * 4
    assert result["ids"] == [2**40 + 1] and result["ids_dtype"] == "int64"  # process 0 gave no row
    assert result["rows"] == np.arange(8 * process, 8 * process + 8).reshape(4, 2).tolist()
    assert result["row_count"] == 4
    assert result["json"] == [{"process": 0, "text": ""}, {"process": 1, "text": "xxxxx"}]
