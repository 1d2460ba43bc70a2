"""lmstruct.eval: zero-shot, linear/few-shot probe, retrieval and modality-structure evaluators.

Build evaluators with ``get_evaluator(name, config)`` and run them with ``run_evaluators``; the metric functions on
precomputed embeddings live in the submodules (``zeroshot``, ``probe``, ``retrieval``, ``structure``).
"""

from lmstruct.eval.evaluators import (
  Evaluator,
  FewShotEvaluator,
  LinearProbeEvaluator,
  Result,
  RetrievalEvaluator,
  StructureEvaluator,
  ZeroShotEvaluator,
)
from lmstruct.eval.registry import EVALUATORS, available_evaluators, get_evaluator, run_evaluators

__all__ = [
  "EVALUATORS",
  "Evaluator",
  "FewShotEvaluator",
  "LinearProbeEvaluator",
  "Result",
  "RetrievalEvaluator",
  "StructureEvaluator",
  "ZeroShotEvaluator",
  "available_evaluators",
  "get_evaluator",
  "run_evaluators",
]
