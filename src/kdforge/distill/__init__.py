"""The Distiller (frozen teacher + student + terms) and the loss registry."""

from kdforge.distill.adapters import InputAdapter
from kdforge.distill.distiller import Distiller, WeightedTerm
from kdforge.distill.losses import TERMS, DistillTerm, build_term

__all__ = ["TERMS", "DistillTerm", "Distiller", "InputAdapter", "WeightedTerm", "build_term"]
