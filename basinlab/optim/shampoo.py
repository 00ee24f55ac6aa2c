"""Shampoo: a Kronecker-factored preconditioner, blocked and grafted, as a torch optimizer.

For a gradient matrix G (m x n) Shampoo keeps two factors, L = EMA(G G^T) (m x m) and
R = EMA(G^T G) (n x n), and steps along L^(-1/4) G R^(-1/4): a non-diagonal
preconditioner that captures correlations between rows and between columns at the cost
of two small matrices per weight. How each parameter is treated:

- Shape: size-1 dims are dropped; a tensor with more than two dims (a conv kernel) is
  viewed as a matrix [dim0, product of the rest]. Vectors (biases, norm weights) and
  scalars take the grafting optimizer's diagonal update, except vectors no longer than
  ``max_vector_preconditioner_dim``, which get one factor (exponent -1/2: full-matrix
  AdaGrad on that vector). A 1024-long bias would otherwise cost as much as a 1024-wide
  weight matrix's factor, for little benefit.
- Blocking: every dim longer than ``max_preconditioner_dim`` is cut into blocks, each
  with its own factors, so no factor is larger than max_preconditioner_dim squared.
- Grafting: per block, the Shampoo direction is rescaled to the norm of a simple
  optimizer's direction (SGD, AdaGrad, RMSprop or Adam), which sets the step size; before
  ``start_preconditioning_step`` the grafting direction is used as it is. With
  preconditioning never started Shampoo reproduces torch.optim SGD/Adagrad/RMSprop/Adam(W).

The update of one parameter at step t (1-based, counted per parameter):

    m   = betas[0]-EMA of the gradient, bias-corrected (the gradient itself if betas[0] = 0)
    L,R = betas[1]-EMA of the Kronecker statistics (sums if betas[1] = 1), bias-corrected
    d   = per block  L^(-1/p) m R^(-1/p)  scaled to the grafting direction's norm
    p  *= 1 - lr * weight_decay                (decoupled)
    buf = momentum * buf + d ;  d = buf, or d + momentum * buf with Nesterov
    p  -= lr * d

Inverse roots are recomputed every ``precondition_frequency`` steps, by eigendecomposition
("eigh") or by a warm-started eigenbasis update ("eigenbasis"); see matrix_functions.
Robustness: a gradient whose sum of squares is not finite in float32 (NaN, Inf, or so
large that the statistics would overflow) skips that parameter's step and is counted
(or raises, by option); a failed or non-finite root is retried in float64, else the
previous root is kept and counted, and ``max_root_failures`` consecutive failures of the
same factor raise. Counts: ``diagnostics()``.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch.profiler import record_function

from basinlab.optim.matrix_functions import eigenbasis_inverse_root, eigh_inverse_root

GRAFTINGS = ("none", "sgd", "adagrad", "rmsprop", "adam")
ROOT_METHODS = ("eigh", "eigenbasis")
FACTOR_DTYPES = {"float32": torch.float32, "float64": torch.float64}
NONFINITE_POLICIES = ("skip", "raise")
# State keys holding per-factor tensors; their dtype is the factor dtype, not the parameter's.
_FACTOR_KEYS = ("factor_", "inv_root_", "eigvecs_")


@dataclass(frozen=True)
class _Block:
    """One preconditioned block: where it sits in the matrix view, and its factor sizes."""

    index: tuple[slice, ...]
    dims: tuple[int, ...]


def matrix_shape(shape: Iterable[int]) -> tuple[int, ...]:
    """The order-0, 1 or 2 shape Shampoo preconditions for a parameter of ``shape``."""
    dims = [d for d in shape if d != 1]
    if len(dims) <= 1:
        return tuple(dims)
    return (dims[0], math.prod(dims[1:]))


def blocks_of(shape: tuple[int, ...], max_dim: int) -> list[_Block]:
    """Cut each dim of a matrix shape into chunks of at most ``max_dim``; one block per chunk pair."""
    ranges = [[(start, min(start + max_dim, n)) for start in range(0, n, max_dim)] for n in shape]
    return [
        _Block(tuple(slice(a, b) for a, b in combo), tuple(b - a for a, b in combo))
        for combo in itertools.product(*ranges)
    ] if shape else []


@functools.lru_cache(maxsize=None)
def _param_blocks(shape: tuple[int, ...], max_dim: int, max_vector_dim: int) -> list[_Block]:
    """The blocks of a parameter shape (cached: asked three times per parameter per step)."""
    matrix = matrix_shape(shape)
    if len(matrix) == 1 and matrix[0] > max_vector_dim:
        return []  # diagonal (grafting) update
    return blocks_of(matrix, max_dim)


def _factor_dtype(value: Any) -> torch.dtype:
    if isinstance(value, torch.dtype) and value in FACTOR_DTYPES.values():
        return value
    if value in FACTOR_DTYPES:
        return FACTOR_DTYPES[value]
    raise ValueError(f"factor_dtype must be one of {', '.join(FACTOR_DTYPES)}, got {value!r}")


class Shampoo(torch.optim.Optimizer):
    """Blocked, grafted Shampoo (see the module docstring for the exact update).

    Args:
        lr: learning rate.
        betas: (gradient EMA coefficient, factor EMA coefficient; 1.0 = plain sums).
        momentum, nesterov: heavy-ball momentum on the final direction, as torch.optim.SGD.
        epsilon: added to the factors' eigenvalues before the inverse root.
        weight_decay: decoupled (AdamW-style) weight decay.
        max_preconditioner_dim: largest factor size; longer dims are blocked.
        max_vector_preconditioner_dim: vectors up to this length get a full-matrix factor;
            longer ones (and all, at the default 0) take the grafting update.
        precondition_frequency: steps between inverse-root recomputations.
        start_preconditioning_step: first step that uses the preconditioner (default:
            precondition_frequency); earlier steps take the grafting direction.
        grafting: "none", "sgd", "adagrad", "rmsprop" or "adam".
        grafting_epsilon, grafting_beta2: the grafting optimizer's epsilon and beta2.
        root_override: use L^(-1/root_override) for every factor instead of 2 * order.
        factor_dtype: "float32" or "float64" for factors and roots.
        root_method: "eigh" (exact) or "eigenbasis" (warm-started, cheaper per update).
        pseudo_inverse: give numerically-zero eigenvalues weight 0 instead of epsilon^(-1/p).
        nonfinite_grads: "skip" (count and skip the parameter's step) or "raise".
        max_root_failures: consecutive failed roots of one factor before raising.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        momentum: float = 0.0,
        nesterov: bool = False,
        epsilon: float = 1e-12,
        weight_decay: float = 0.0,
        max_preconditioner_dim: int = 1024,
        max_vector_preconditioner_dim: int = 0,
        precondition_frequency: int = 10,
        start_preconditioning_step: int | None = None,
        grafting: str = "adam",
        grafting_epsilon: float = 1e-8,
        grafting_beta2: float = 0.999,
        root_override: float | None = None,
        factor_dtype: str | torch.dtype = "float32",
        root_method: str = "eigh",
        pseudo_inverse: bool = False,
        nonfinite_grads: str = "skip",
        max_root_failures: int = 10,
    ):
        beta1, beta2 = betas
        checks = [
            (lr >= 0, f"lr must be >= 0, got {lr}"),
            (0 <= beta1 < 1, f"betas[0] must be in [0, 1), got {beta1}"),
            (0 < beta2 <= 1, f"betas[1] must be in (0, 1], got {beta2}"),
            (momentum >= 0, f"momentum must be >= 0, got {momentum}"),
            (not nesterov or momentum > 0, "nesterov requires momentum > 0"),
            (epsilon >= 0, f"epsilon must be >= 0, got {epsilon}"),
            (weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay}"),
            (max_preconditioner_dim >= 1, f"max_preconditioner_dim must be >= 1, got {max_preconditioner_dim}"),
            (
                max_vector_preconditioner_dim >= 0,
                f"max_vector_preconditioner_dim must be >= 0, got {max_vector_preconditioner_dim}",
            ),
            (precondition_frequency >= 1, f"precondition_frequency must be >= 1, got {precondition_frequency}"),
            (
                start_preconditioning_step is None or start_preconditioning_step >= 1,
                f"start_preconditioning_step must be >= 1 or None, got {start_preconditioning_step}",
            ),
            (grafting in GRAFTINGS, f"grafting must be one of {', '.join(GRAFTINGS)}, got {grafting!r}"),
            (grafting_epsilon > 0, f"grafting_epsilon must be > 0, got {grafting_epsilon}"),
            (
                0 <= grafting_beta2 < 1 or (grafting_beta2 == 1 and grafting != "adam"),
                f"grafting_beta2 must be in [0, 1) (1 only without adam grafting), got {grafting_beta2}",
            ),
            (root_override is None or root_override > 0, f"root_override must be > 0, got {root_override}"),
            (root_method in ROOT_METHODS, f"root_method must be one of {', '.join(ROOT_METHODS)}, got {root_method!r}"),
            (
                nonfinite_grads in NONFINITE_POLICIES,
                f"nonfinite_grads must be one of {', '.join(NONFINITE_POLICIES)}, got {nonfinite_grads!r}",
            ),
            (max_root_failures >= 1, f"max_root_failures must be >= 1, got {max_root_failures}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        factor_dtype = next(k for k, v in FACTOR_DTYPES.items() if v == _factor_dtype(factor_dtype))
        defaults = dict(
            lr=lr,
            betas=(beta1, beta2),
            momentum=momentum,
            nesterov=nesterov,
            epsilon=epsilon,
            weight_decay=weight_decay,
            max_preconditioner_dim=max_preconditioner_dim,
            max_vector_preconditioner_dim=max_vector_preconditioner_dim,
            precondition_frequency=precondition_frequency,
            start_preconditioning_step=start_preconditioning_step,
            grafting=grafting,
            grafting_epsilon=grafting_epsilon,
            grafting_beta2=grafting_beta2,
            root_override=root_override,
            factor_dtype=factor_dtype,
            root_method=root_method,
            pseudo_inverse=pseudo_inverse,
            nonfinite_grads=nonfinite_grads,
            max_root_failures=max_root_failures,
        )
        super().__init__(params, defaults)

    # ----------------------------------------------------------------- public helpers

    def diagnostics(self) -> dict[str, int]:
        """Counts of skipped parameter steps (non-finite gradients) and failed root computations."""
        states = list(self.state.values())
        return {
            "skipped_steps": sum(s.get("skipped_steps", 0) for s in states),
            "root_failures": sum(s.get("root_failures", 0) for s in states),
            "preconditioned_params": sum(1 for s in states if s.get("roots_computed", 0) > 0),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, but keep factor tensors in their own dtype (torch casts to the parameter's)."""
        saved = state_dict["state"]
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for index, values in saved.items():
            param = params[index]
            for key, value in values.items():
                if isinstance(key, str) and key.startswith(_FACTOR_KEYS):
                    self.state[param][key] = value.to(device=param.device, copy=True)

    # ----------------------------------------------------------------- the step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = self._usable_params(group)
            with record_function("shampoo.factor_update"):
                for param in params:
                    self._update_statistics(param, group)
            with record_function("shampoo.root"):
                self._compute_roots(params, group)
            for param in params:
                self._update_param(param, group)
        return loss

    def _usable_params(self, group: dict[str, Any]) -> list[torch.Tensor]:
        """Parameters with a gradient whose sum of squares is finite in float32."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return []
        squares = torch.stack([torch.dot(g, g) for g in (p.grad.reshape(-1).float() for p in params)])
        usable = []
        for param, finite in zip(params, torch.isfinite(squares).tolist()):
            if finite:
                usable.append(param)
                continue
            if group["nonfinite_grads"] == "raise":
                raise FloatingPointError(
                    f"Shampoo: non-finite or overflowing gradient for a parameter of shape {tuple(param.shape)}; "
                    "pass nonfinite_grads='skip' to skip such steps instead"
                )
            state = self.state[param]
            state["skipped_steps"] = state.get("skipped_steps", 0) + 1
        return usable

    def _blocks(self, param: torch.Tensor, group: dict[str, Any]) -> list[_Block]:
        return _param_blocks(
            tuple(param.shape), group["max_preconditioner_dim"], group["max_vector_preconditioner_dim"]
        )

    def _init_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = self.state[param]
        state.update(step=0, roots_computed=0, root_failures=0)
        state.setdefault("skipped_steps", 0)
        if group["betas"][0] > 0:
            state["grad_ema"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["grafting"] in ("adagrad", "rmsprop", "adam"):
            state["graft_accumulator"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        dtype = _factor_dtype(group["factor_dtype"])
        for b, block in enumerate(self._blocks(param, group)):
            for k, dim in enumerate(block.dims):
                state[f"factor_{b}_{k}"] = torch.zeros(dim, dim, dtype=dtype, device=param.device)
                state[f"inv_root_{b}_{k}"] = torch.eye(dim, dtype=dtype, device=param.device)
                state[f"consecutive_failures_{b}_{k}"] = 0
        return state

    def _update_statistics(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        """Advance the step count, the Kronecker factors, the grafting accumulator and the gradient EMA."""
        state = self.state[param]
        if "step" not in state:
            state = self._init_state(param, group)
        state["step"] += 1
        grad = param.grad
        beta1, beta2 = group["betas"]
        dtype = _factor_dtype(group["factor_dtype"])
        view = grad.reshape(matrix_shape(grad.shape))
        decay, weight = (1.0, 1.0) if beta2 == 1 else (beta2, 1.0 - beta2)
        for b, block in enumerate(self._blocks(param, group)):
            g = view[block.index].to(dtype)
            if len(block.dims) == 1:
                state[f"factor_{b}_0"].addr_(g, g, beta=decay, alpha=weight)
            else:  # beta folds the EMA decay into the GEMM: no separate pass over the factor
                state[f"factor_{b}_0"].addmm_(g, g.T, beta=decay, alpha=weight)
                state[f"factor_{b}_1"].addmm_(g.T, g, beta=decay, alpha=weight)
        grafting = group["grafting"]
        if grafting == "adagrad":
            state["graft_accumulator"].addcmul_(grad, grad)
        elif grafting in ("rmsprop", "adam"):
            gamma = group["grafting_beta2"]
            state["graft_accumulator"].mul_(gamma).addcmul_(grad, grad, value=1 - gamma)
        if beta1 > 0:
            state["grad_ema"].lerp_(grad, 1 - beta1)

    def _start(self, group: dict[str, Any]) -> int:
        start = group["start_preconditioning_step"]
        return group["precondition_frequency"] if start is None else start

    def _compute_roots(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        """Recompute the inverse roots that are due, batching factors of the same size."""
        start, frequency = self._start(group), group["precondition_frequency"]
        beta2 = group["betas"][1]
        pending: dict[tuple[int, bool, float], list[tuple[dict, str]]] = {}
        for param in params:
            state = self.state[param]
            t = state["step"]
            blocks = self._blocks(param, group)
            if t < start or (t - start) % frequency or not blocks:
                continue
            state["roots_computed"] += 1
            for b, block in enumerate(blocks):
                root = group["root_override"] or 2 * len(block.dims)
                for k, dim in enumerate(block.dims):
                    warm = group["root_method"] == "eigenbasis" and f"eigvecs_{b}_{k}" in state
                    pending.setdefault((dim, warm, root), []).append((state, f"{b}_{k}"))
        for (_, warm, root), entries in pending.items():
            factors = torch.stack(
                [
                    state[f"factor_{key}"] / (1.0 if beta2 == 1 else 1.0 - beta2 ** state["step"])
                    for state, key in entries
                ]
            )
            results = self._try_roots(factors, entries, root, warm, group)
            for i, (state, key) in enumerate(entries):
                if results is not None and results[0][i].isfinite().all():
                    self._store_root(state, key, results[0][i], results[1][i], group)
                else:  # isolate the failure: this factor alone, in float64 if needed
                    self._root_one(state, key, factors[i], root, warm, group)

    def _try_roots(self, factors, entries, root, warm, group):
        try:
            if warm:
                vectors = torch.stack([state[f"eigvecs_{key}"] for state, key in entries])
                return eigenbasis_inverse_root(
                    factors, vectors, root, group["epsilon"], pseudo_inverse=group["pseudo_inverse"]
                )
            return eigh_inverse_root(factors, root, group["epsilon"], pseudo_inverse=group["pseudo_inverse"])
        except RuntimeError:  # torch.linalg errors (e.g. eigh did not converge)
            return None

    def _root_one(self, state, key, factor, root, warm, group) -> None:
        for dtype in dict.fromkeys([factor.dtype, torch.float64]):
            result = self._try_roots(
                factor.to(dtype).unsqueeze(0), [(state, key)], root, warm and dtype == factor.dtype, group
            )
            if result is not None and result[0].isfinite().all():
                self._store_root(state, key, result[0][0].to(factor.dtype), result[1][0].to(factor.dtype), group)
                return
        state["root_failures"] += 1
        state[f"consecutive_failures_{key}"] += 1
        if state[f"consecutive_failures_{key}"] >= group["max_root_failures"]:
            n = factor.shape[-1]
            raise RuntimeError(
                f"Shampoo: the inverse root of a {n}x{n} factor failed {group['max_root_failures']} times in a row "
                "(non-finite or ill-conditioned statistics); try a larger epsilon, factor_dtype='float64' "
                "or pseudo_inverse=True"
            )

    def _store_root(self, state, key, inv_root, eigenvectors, group) -> None:
        state[f"inv_root_{key}"].copy_(inv_root)
        state[f"consecutive_failures_{key}"] = 0
        if group["root_method"] == "eigenbasis":
            state[f"eigvecs_{key}"] = eigenvectors.clone()

    def _graft_direction(self, state: dict[str, Any], m_hat: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        grafting = group["grafting"]
        if grafting in ("none", "sgd"):
            return m_hat
        accumulator = state["graft_accumulator"]
        if grafting == "adam":
            accumulator = accumulator / (1 - group["grafting_beta2"] ** state["step"])
        return m_hat / accumulator.sqrt().add_(group["grafting_epsilon"])

    def _update_param(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[param]
        t = state["step"]
        beta1 = group["betas"][0]
        m_hat = state["grad_ema"] / (1 - beta1**t) if beta1 > 0 else param.grad
        with record_function("shampoo.graft"):
            graft = self._graft_direction(state, m_hat, group)
        blocks = self._blocks(param, group)
        if t >= self._start(group) and blocks:
            with record_function("shampoo.precondition"):
                direction = self._precondition(state, m_hat, graft, blocks, group)
        else:
            direction = graft
        lr = group["lr"]
        if group["weight_decay"]:
            param.mul_(1 - lr * group["weight_decay"])
        if group["momentum"]:
            buffer = state["momentum_buffer"]
            buffer.mul_(group["momentum"]).add_(direction)
            direction = direction.add(buffer, alpha=group["momentum"]) if group["nesterov"] else buffer
        param.add_(direction, alpha=-lr)

    def _precondition(self, state, m_hat, graft, blocks, group) -> torch.Tensor:
        """Per block L^(-1/p) M R^(-1/p), rescaled to the grafting direction's norm."""
        dtype = _factor_dtype(group["factor_dtype"])
        shape = matrix_shape(m_hat.shape)
        m_view, graft_view = m_hat.reshape(shape), graft.reshape(shape)
        direction = torch.empty(shape, dtype=m_hat.dtype, device=m_hat.device)
        for b, block in enumerate(blocks):
            m = m_view[block.index].to(dtype)
            if len(block.dims) == 1:
                d = state[f"inv_root_{b}_0"] @ m
            else:
                d = state[f"inv_root_{b}_0"] @ m @ state[f"inv_root_{b}_1"]
            if group["grafting"] != "none":  # a zero direction stays zero (0 * finite scale)
                norm = torch.linalg.vector_norm(d).clamp_min(torch.finfo(dtype).tiny)
                d.mul_(torch.linalg.vector_norm(graft_view[block.index].to(dtype)) / norm)
            direction[block.index] = d
        return direction.reshape(m_hat.shape)
