"""Which parameters Muon orthogonalises and which take its AdamW: the usual split, as param groups.

Muon is meant for the hidden weight matrices. Embeddings (rows are looked up, not mixed),
the output head (its update sets the logits' scale) and 1-D parameters (nothing to
orthogonalise) take AdamW. An optimizer that receives parameters only cannot tell an
embedding from a hidden matrix, so the split is made where the model is known and travels
as param groups flagged ``use_muon`` (the flag pytorch-optimizer and Jordan et al.'s
MuonWithAuxAdam use):

    Muon(muon_param_groups(model), lr=...)
    Trainer(..., optimizer_cls_and_kwargs=(Muon, {"params": muon_param_groups(model, weight_decay=0.01), "lr": ...}))

(the Trainer uses a ``params`` entry of the kwargs as the param groups). Run configs name
the rule with the ``adamw_rule`` option; the recipes call this function on their models.

Rules:
- "default": AdamW for 1-D parameters, the weights of ``nn.Embedding`` modules and the
  output head: every module some submodule's ``get_output_embeddings()`` returns (HF
  models, basinlab's MLP), else the model's last ``nn.Linear``;
- "matrices": AdamW for 1-D parameters only; every matrix is orthogonalised;
- a list of fnmatch patterns over parameter names: those parameters and 1-D ones take AdamW.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from torch import nn

from basinlab.optim.layout import matrix_shape

ADAMW_RULES = ("default", "matrices")


def check_adamw_rule(rule: Any) -> None:
    patterns = isinstance(rule, (list, tuple)) and all(isinstance(p, str) for p in rule)
    if rule not in ADAMW_RULES and not patterns:
        raise ValueError(f"adamw_rule must be one of {', '.join(ADAMW_RULES)} or a list of name patterns, got {rule!r}")


def _output_heads(model: nn.Module) -> list[nn.Module]:
    heads = []
    for module in model.modules():
        getter = getattr(module, "get_output_embeddings", None)
        head = getter() if callable(getter) else None
        if isinstance(head, nn.Module):
            heads.append(head)
    if not heads:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        heads = linears[-1:]
    return heads


def adamw_parameter_names(model: nn.Module, rule: Any = "default") -> set[str]:
    """Names (as ``model.named_parameters()`` gives them) of the parameters that take AdamW under ``rule``."""
    check_adamw_rule(rule)
    names = {n for n, p in model.named_parameters() if len(matrix_shape(p.shape)) < 2}
    if rule == "default":
        chosen = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        chosen |= {id(p) for head in _output_heads(model) for p in head.parameters()}
        names |= {n for n, p in model.named_parameters() if id(p) in chosen}
    elif rule != "matrices":
        names |= {n for n, _ in model.named_parameters() if any(fnmatch.fnmatchcase(n, pattern) for pattern in rule)}
    return names


def muon_param_groups(model: nn.Module, adamw_rule: Any = "default", weight_decay: float | None = None) -> list[dict]:
    """Param groups for Muon: ``use_muon=True`` (the matrices it orthogonalises) and ``use_muon=False``
    (the AdamW ones). With ``weight_decay``, matrices get it and 1-D parameters none (HF's convention);
    without, every group takes the optimizer's default. Parameters without ``requires_grad`` are left out;
    tied weights appear once."""
    adamw = adamw_parameter_names(model, adamw_rule)
    buckets: dict[tuple[bool, bool], list] = {(True, True): [], (False, True): [], (False, False): []}
    for name, param in model.named_parameters():  # named_parameters yields a tied weight once
        if param.requires_grad:
            matrix = len(matrix_shape(param.shape)) == 2 or weight_decay is None  # no decay split: one AdamW group
            buckets[(name not in adamw, matrix)].append(param)
    groups = []
    for (use_muon, matrix), params in buckets.items():
        if params:
            group: dict[str, Any] = {"params": params, "use_muon": use_muon}
            if weight_decay is not None:
                group["weight_decay"] = weight_decay if matrix else 0.0
            groups.append(group)
    return groups
