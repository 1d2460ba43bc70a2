"""Losses of lmstruct: one module per concept, all on L2-normalised [N, D] features, float32 math."""
from lmstruct.losses.alignment import alignment_loss, gap_alignment_loss
from lmstruct.losses.bridge import brownian_bridge_loss
from lmstruct.losses.clip import clip_loss
from lmstruct.losses.cyclip import cyclip_loss
from lmstruct.losses.geometric import geometric_consistency_loss
from lmstruct.losses.inmodal import inmodal_contrastive_loss
from lmstruct.losses.objective import ObjectiveConfig, compute_objective
from lmstruct.losses.registry import TERMS
from lmstruct.losses.separation import separation_loss
from lmstruct.losses.sigmoid import sigmoid_loss
from lmstruct.losses.term import Features, Term

__all__ = [
    "Features", "ObjectiveConfig", "TERMS", "Term", "alignment_loss", "brownian_bridge_loss", "clip_loss",
    "compute_objective", "cyclip_loss", "gap_alignment_loss", "geometric_consistency_loss",
    "inmodal_contrastive_loss", "separation_loss", "sigmoid_loss",
]
