from hopelm.models.lm import LM, LMOutput, sample_next
from hopelm.models.registry import list_models, model_from_config, register
from hopelm.models.stacking import stack_levels

__all__ = ["LM", "LMOutput", "list_models", "model_from_config", "register", "sample_next", "stack_levels"]
