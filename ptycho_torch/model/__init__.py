"""PtychoPINN's model: physics, generator, Lightning module, training set-up and stitching (needs torch and lightning)."""

from __future__ import annotations

__all__ = ["PtychoPINN_Lightning"]


def __getattr__(name: str):
    # ``ptycho_torch.model.physics`` and ``networks`` need only torch; the Lightning module is imported on first use.
    if name == "PtychoPINN_Lightning":
        from ptycho_torch.model.lightning_module import PtychoPINN_Lightning

        return PtychoPINN_Lightning
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
