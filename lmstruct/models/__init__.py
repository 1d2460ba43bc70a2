"""Flax linen encoders and the two-tower model."""

from lmstruct.models.factory import PRESETS, build_model, input_shapes, resolve_model_config
from lmstruct.models.two_tower import TwoTower

__all__ = ["PRESETS", "TwoTower", "build_model", "input_shapes", "resolve_model_config"]
