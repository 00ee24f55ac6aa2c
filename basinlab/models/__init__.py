"""Models built from configs with seeded, optimizer-independent initialization."""

from basinlab.models.bert import BERT_PRESETS, bert_config, build_bert_mlm
from basinlab.models.mlp import MLP
from basinlab.models.powerprop import PowerpropLinear, effective_weights

__all__ = ["BERT_PRESETS", "MLP", "PowerpropLinear", "bert_config", "build_bert_mlm", "effective_weights"]
