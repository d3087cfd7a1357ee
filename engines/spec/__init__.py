"""Model and hardware profiles, constants with their sources, and the cost model."""
from engines.spec.constants import SimConstants
from engines.spec.cost import CostModel
from engines.spec.profiles import HardwareSpec, ModelSpec, hardware_spec, model_spec

__all__ = ["CostModel", "HardwareSpec", "ModelSpec", "SimConstants", "hardware_spec", "model_spec"]
