"""The open_clip peer of the update benchmarks: one CLIP training update in PyTorch, run as a worker process.

Runs inside its own virtual environment (never a dependency of lmstruct):

    python3 -m venv ../peer-venv
    ../peer-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 open-clip-torch==3.3.0

It is started by benchmarks/update_throughput.py (``--peer-python``, default ``$LMSTRUCT_PEER_PYTHON`` or
``../peer-venv/bin/python``) with ``--worker '<json spec>'`` and answers JSON-line commands (benchmarks/common.py's
``serve``): ``build``, ``step`` (n updates, seconds each), ``matmul`` (torch matmul FLOP/s), ``memory``.

The update is the one open_clip's own training loop performs: forward of both towers (under
``torch.autocast("cpu", dtype=torch.bfloat16)`` for bfloat16), ``open_clip.ClipLoss``, backward, global-norm
clipping at 1.0 (as lmstruct's optimizer does), ``torch.optim.AdamW`` (β = 0.9, 0.98, ε = 1e-6, weight decay 0.1
on matrices only), and the logit-scale clamp at log 100.
"""

from __future__ import annotations

import json
import math
import pathlib
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  (stdlib + numpy only)


def build_open_clip_model(name: str):
  """open_clip's own 'ViT-B-32' for B/32; for tiny, open_clip's CLIP class with the reference numbers."""
  import open_clip

  ref = common.REFERENCE[name]
  if name == "B32":
    model = open_clip.create_model("ViT-B-32", pretrained=None)
  else:
    vision = open_clip.CLIPVisionCfg(
      layers=ref["vision_layers"],
      width=ref["vision_width"],
      head_width=ref["vision_width"] // ref["vision_heads"],
      patch_size=ref["patch"],
      image_size=ref["image_size"],
    )
    text = open_clip.CLIPTextCfg(
      context_length=ref["context"],
      vocab_size=ref["vocab"],
      width=ref["text_width"],
      heads=ref["text_heads"],
      layers=ref["text_layers"],
    )
    model = open_clip.model.CLIP(embed_dim=ref["embed"], vision_cfg=vision, text_cfg=text)
  return model


class Peer:
  def __init__(self, spec: dict[str, Any]):
    self.spec = spec
    self.update = None

  def build(self) -> dict[str, Any]:
    import open_clip
    import torch

    spec = self.spec
    if spec.get("threads"):
      torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(spec.get("seed", 0))
    start = time.perf_counter()
    ref = common.REFERENCE[spec["config"]]
    model = build_open_clip_model(spec["config"])
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
      [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
      lr=1e-5,
      betas=(0.9, 0.98),
      eps=1e-6,
    )
    loss_fn = open_clip.ClipLoss()
    host = common.synthetic_batch(ref, int(spec.get("batch") or ref["batch"]), spec.get("seed", 0))
    images = torch.from_numpy(host["image"]).permute(0, 3, 1, 2).contiguous()
    texts = torch.from_numpy(host["text"]).long()
    bf16 = spec.get("dtype", "float32") == "bfloat16"
    params = list(model.parameters())
    max_log_scale = math.log(100.0)

    def update() -> float:
      with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        image_features, text_features, logit_scale = model(images, texts)
        loss = loss_fn(image_features, text_features, logit_scale)
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(params, 1.0)
      optimizer.step()
      with torch.no_grad():
        model.logit_scale.clamp_(0, max_log_scale)
      return float(loss.detach())

    self.update = update
    return {
      "build_s": time.perf_counter() - start,
      "params": sum(p.numel() for p in params),
      "threads": torch.get_num_threads(),
      "torch": torch.__version__,
      "open_clip": open_clip.__version__,
      "mkldnn_bf16": bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: None)()),
      **common.memory_mib(),
    }

  def step(self, n: int = 1) -> dict[str, Any]:
    times = []
    for _ in range(n):
      start = time.perf_counter()
      loss = self.update()
      times.append(time.perf_counter() - start)
      if not math.isfinite(loss):
        raise FloatingPointError("open_clip update produced a non-finite loss")
    return {"times_s": times, "loss": loss}

  def profile(self, steps: int, directory: str, top: int = 12) -> dict[str, Any]:
    """torch.profiler over `steps` updates: self CPU time per aten operation (ms per step), matmuls summed."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    pathlib.Path(directory).mkdir(parents=True, exist_ok=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
      times = [self.step(1)["times_s"][0] for _ in range(steps)]
    prof.export_chrome_trace(str(pathlib.Path(directory) / "trace.json"))
    ops = sorted(((e.key, e.self_cpu_time_total / 1e3 / steps) for e in prof.key_averages()), key=lambda kv: -kv[1])
    total = sum(ms for _, ms in ops)
    matmul_names = (
      "aten::mm",
      "aten::addmm",
      "aten::bmm",
      "aten::baddbmm",
      "aten::convolution",
      "aten::mkldnn_convolution",
      "aten::_mkldnn",
      "aten::linear",
      "aten::matmul",
    )
    matmul = sum(ms for name, ms in ops if name.startswith(matmul_names))
    return {
      "step_s": times,
      "self_cpu_ms_per_step": total,
      "matmul_ms_per_step": matmul,
      "matmul_share": matmul / total if total else None,
      "top_ops": [{"name": name, "ms": ms} for name, ms in ops[:top]],
      "torch_threads": torch.get_num_threads(),
    }

  @staticmethod
  def matmul(dtype: str, n: int = 3072, repeats: int = 5) -> dict[str, Any]:
    import torch

    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    torch.matmul(a, b)
    times = common.time_calls(lambda: torch.matmul(a, b), repeats)
    return {
      "framework": "torch",
      "dtype": dtype,
      "n": n,
      "flops": 2.0 * n**3 / statistics.median(times),
      "times_s": times,
    }

  def handle(self, command: dict[str, Any]) -> dict[str, Any]:
    cmd = command.pop("cmd")
    if cmd == "build":
      return self.build()
    if cmd == "step":
      return self.step(int(command.get("n", 1)))
    if cmd == "matmul":
      return self.matmul(**command)
    if cmd == "profile":
      return self.profile(int(command.get("steps", 2)), command["directory"])
    if cmd == "memory":
      return common.memory_reply(command)
    raise ValueError(f"unknown command {cmd!r}")


def main() -> None:
  if len(sys.argv) != 3 or sys.argv[1] != "--worker":
    sys.exit(__doc__)
  common.serve(Peer(json.loads(sys.argv[2])).handle)


if __name__ == "__main__":
  main()
