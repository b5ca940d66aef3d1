"""The table of published CLIPSeg checkpoints (their preprocessing is read from each checkpoint's files)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckpointInfo:
    """A published checkpoint: where it lives and what it is for."""

    hub_id: str
    description: str
    size_mb: int


REGISTRY: dict[str, CheckpointInfo] = {
    info.hub_id: info
    for info in (
        CheckpointInfo(
            "CIDAS/clipseg-rd64-refined",
            "reduce_dim 64, refined upsampling: the sharpest masks",
            603,
        ),
        CheckpointInfo("CIDAS/clipseg-rd64", "reduce_dim 64, plain upsampling", 603),
        CheckpointInfo("CIDAS/clipseg-rd16", "reduce_dim 16, plain upsampling: smallest decoder", 600),
    )
}

# Segment Anything checkpoints for ``--refine sam`` (transformers' SamModel), smallest first. SlimSAM-50
# (Chen et al. 2023, arXiv:2312.05284) is SAM ViT-B pruned to half its width and distilled back: 112 MB
# against 375 MB, masks close to SAM ViT-B's. SlimSAM-77 is smaller still, at a further cost in accuracy.
SAM_REGISTRY: dict[str, CheckpointInfo] = {
    info.hub_id: info
    for info in (
        CheckpointInfo("nielsr/slimsam-50-uniform", "SlimSAM-50 (SAM ViT-B at half width): what --refine sam uses",
                       112),
        CheckpointInfo("facebook/sam-vit-base", "SAM ViT-B, for --refine sam --sam-weights sam-vit-base", 375),
    )
}

# Short names accepted wherever a hub id is: "rd64-refined" -> "CIDAS/clipseg-rd64-refined".
ALIASES: dict[str, str] = {hub_id.split("clipseg-", 1)[1]: hub_id for hub_id in REGISTRY}
ALIASES |= {"slimsam-50": "nielsr/slimsam-50-uniform", "sam-vit-base": "facebook/sam-vit-base"}


def available_models() -> list[str]:
    """Names of the published checkpoints, default first.

    Returns:
        The hub ids of the registry.
    """
    return list(REGISTRY)


def resolve_name(name: str) -> str:
    """Map an alias to its hub id; other names pass through unchanged.

    Returns:
        The hub id for a registry alias, else ``name``.
    """
    return ALIASES.get(name, name)
