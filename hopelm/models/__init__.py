from hopelm.models.lm import LM, LMOutput, sample_next
from hopelm.models.registry import list_models, model_from_config, register

__all__ = ["LM", "LMOutput", "list_models", "model_from_config", "register", "sample_next"]
