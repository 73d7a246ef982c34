"""Model building, checkpoint loading and feature taps."""

from kdforge.models.build import MODEL_SOURCES, build_model
from kdforge.models.checkpoint import load_weights, read_state_dict
from kdforge.models.taps import TappedModel

__all__ = ["MODEL_SOURCES", "TappedModel", "build_model", "load_weights", "read_state_dict"]
