"""Model and hardware profiles, constants with their sources, and the cost model."""
from engines.costmodel.constants import SimConstants
from engines.costmodel.cost import CostModel
from engines.costmodel.profiles import HardwareSpec, ModelSpec, hardware_spec, model_spec

__all__ = ["CostModel", "HardwareSpec", "ModelSpec", "SimConstants", "hardware_spec", "model_spec"]
