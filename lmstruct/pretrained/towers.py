"""Named pretrained towers, as TwoTower variables ready for ``merge_pretrained``.

    load_towers(['efficientnet_lite0', 'all-MiniLM-L6-v2'])
      → {'params': {'image_tower': …, 'text_tower': …}, 'batch_stats': {'image_tower': …}}

Each name fills the tower slot of the model it fits (preset ``LiT-EfficientNetLite0-MiniLM`` has both); the
weights come from the asset cache (``python -m lmstruct.pretrained.assets fetch``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lmstruct.choices import unknown_choice
from lmstruct.pretrained.bert import minilm_variables
from lmstruct.pretrained.efficientnet import efficientnet_lite0_variables

TOWERS: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
  "efficientnet_lite0": ("image_tower", efficientnet_lite0_variables),
  "all-MiniLM-L6-v2": ("text_tower", minilm_variables),
}


def load_towers(names: Sequence[str]) -> dict[str, Any]:
  """Variables of the named pretrained towers, each under its slot (``image_tower`` / ``text_tower``)."""
  variables: dict[str, Any] = {}
  slots: dict[str, str] = {}
  for name in names:
    if name not in TOWERS:
      raise unknown_choice("pretrained tower", name, TOWERS)
    slot, load = TOWERS[name]
    if slot in slots:
      raise ValueError(f"pretrained towers {slots[slot]!r} and {name!r} both fill the {slot}")
    slots[slot] = name
    for collection, tree in load().items():
      variables.setdefault(collection, {})[slot] = tree
  return variables
