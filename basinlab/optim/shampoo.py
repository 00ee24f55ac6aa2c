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

Distributed (on by default under torch.distributed with several ranks): every block's
state and work (gradient EMA, grafting accumulator, momentum, factors, roots) lives on
one owner rank, chosen by cost-balanced assignment (sharding.py); each step the owners
compute their blocks' directions and one all-gather gives every rank all of them, so
parameters stay identical across ranks. Gradients must already be averaged across ranks
(DDP, Accelerate, DeepSpeed stage 0 and the HF Trainer do this). With float32
communication the result is bitwise that of one process; state_dict() holds this rank's
blocks, and save_sharded_state / load_sharded_state (checkpoint.py) save and re-shard all.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch.profiler import record_function

from basinlab.optim.matrix_functions import eigenbasis_inverse_root, eigh_inverse_root
from basinlab.optim.sharding import ShardLayout, block_cost

GRAFTINGS = ("none", "sgd", "adagrad", "rmsprop", "adam")
ROOT_METHODS = ("eigh", "eigenbasis")
FACTOR_DTYPES = {"float32": torch.float32, "float64": torch.float64}
NONFINITE_POLICIES = ("skip", "raise")
COMMUNICATION_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# State keys holding per-factor tensors; their dtype is the factor dtype, not the parameter's.
_FACTOR_KEYS = ("factor_", "inv_root_", "eigvecs_")


@dataclass(frozen=True)
class _Block:
    """One unit of work: where it sits in the parameter's matrix view, and its factor sizes.

    A block with no factor dims (``dims == ()``) takes the diagonal (grafting) update.
    """

    index: tuple[slice, ...]
    dims: tuple[int, ...]
    shape: tuple[int, ...]


def matrix_shape(shape: Iterable[int]) -> tuple[int, ...]:
    """The order-0, 1 or 2 shape Shampoo preconditions for a parameter of ``shape``."""
    dims = [d for d in shape if d != 1]
    if len(dims) <= 1:
        return tuple(dims)
    return (dims[0], math.prod(dims[1:]))


def blocks_of(shape: tuple[int, ...], max_dim: int) -> list[_Block]:
    """Cut each dim of a matrix shape into chunks of at most ``max_dim``; one block per chunk pair."""
    ranges = [[(start, min(start + max_dim, n)) for start in range(0, n, max_dim)] for n in shape]
    blocks = []
    for combo in itertools.product(*ranges):
        dims = tuple(b - a for a, b in combo)
        blocks.append(_Block(tuple(slice(a, b) for a, b in combo), dims, dims))
    return blocks


@functools.lru_cache(maxsize=None)
def _param_blocks(shape: tuple[int, ...], max_dim: int, max_vector_dim: int) -> tuple[_Block, ...]:
    """The blocks of a parameter shape; scalars and long vectors are one diagonal block."""
    matrix = matrix_shape(shape)
    if not matrix or (len(matrix) == 1 and matrix[0] > max_vector_dim):
        return (_Block(tuple(slice(0, n) for n in matrix), (), matrix),)
    return tuple(blocks_of(matrix, max_dim))


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
        distributed: split the block work across data-parallel ranks (None: yes when
            torch.distributed is initialized with more than one rank at the first step).
        communication_dtype: "float32" (bitwise-exact), "bfloat16" or "float16" for the
            all-gather of search directions.
        process_group: the ranks that share the work (default: all).
        distributed_group_size: split the world into groups of this many consecutive
            ranks, each sharing the work among itself (fewer, smaller all-gathers).
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
        distributed: bool | None = None,
        communication_dtype: str = "float32",
        process_group: Any = None,
        distributed_group_size: int | None = None,
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
            (distributed in (None, True, False), f"distributed must be None, True or False, got {distributed!r}"),
            (
                communication_dtype in COMMUNICATION_DTYPES,
                f"communication_dtype must be one of {', '.join(COMMUNICATION_DTYPES)}, got {communication_dtype!r}",
            ),
            (
                distributed_group_size is None or distributed_group_size >= 1,
                f"distributed_group_size must be >= 1 or None, got {distributed_group_size}",
            ),
            (
                process_group is None or distributed_group_size is None,
                "pass process_group or distributed_group_size, not both",
            ),
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
        self._distributed = distributed
        self._communication_dtype = COMMUNICATION_DTYPES[communication_dtype]
        self._process_group = process_group
        self._distributed_group_size = distributed_group_size
        self._comm: _Comm | None = None
        self._comm_resolved = False
        self._cached_plan: _Plan | None = None

    # ----------------------------------------------------------------- public helpers

    def diagnostics(self) -> dict[str, int]:
        """Counts of skipped parameter steps (non-finite gradients) and failed root computations.

        Distributed, root counts cover this rank's blocks only.
        """
        states = list(self.state.values())
        return {
            "skipped_steps": sum(s.get("skipped_steps", 0) for s in states),
            "root_failures": sum(s.get("root_failures", 0) for s in states),
            "preconditioned_params": sum(1 for s in states if s.get("roots_computed", 0) > 0),
        }

    def sharding(self) -> dict[str, Any] | None:
        """World size, this rank, the owner of every block and the summed block cost per rank;
        None when not distributed (the first step, or load_state_dict, decides)."""
        plan = self._plan()
        if plan.comm is None:
            return None
        return {
            "world_size": plan.comm.world_size,
            "rank": plan.comm.rank,
            "owners": list(plan.layout.owners),
            "loads": plan.layout.loads(plan.costs, plan.comm.world_size),
        }

    def state_dict(self) -> dict[str, Any]:
        """As torch's; distributed, it holds this rank's blocks only and says so under "sharding"."""
        state_dict = super().state_dict()
        sharding = self.sharding() if self._comm_resolved else None
        if sharding is not None:
            state_dict["sharding"] = {k: sharding[k] for k in ("world_size", "rank", "owners")}
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, but keep factor tensors in their own dtype (torch casts to the parameter's),
        keep only the blocks this rank owns, and refuse a state that lacks any of them."""
        saved = state_dict["state"]
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "sharding"})
        plan = self._plan()
        params = [p for group in self.param_groups for p in group["params"]]
        for index, values in saved.items():
            param = params[index]
            for key, value in values.items():
                if isinstance(key, str) and key.startswith(_FACTOR_KEYS):
                    self.state[param][key] = value.to(device=param.device, copy=True)
        for index, (param, group) in enumerate(zip(params, (g for g in self.param_groups for _ in g["params"]))):
            state = self.state.get(param)
            if not state or "step" not in state:
                continue
            for b, block in enumerate(plan.blocks[index]):
                keys = self._block_keys(b, block, group)
                if plan.owns(index, b):
                    missing = [k for k in keys if k not in state and not k.startswith("eigvecs_")]
                    if missing:
                        raise ValueError(self._missing_shard_message(state_dict, index, param, b))
                else:
                    for key in keys:
                        state.pop(key, None)

    def _missing_shard_message(self, state_dict, index, param, b) -> str:
        origin = state_dict.get("sharding")
        source = (
            f"rank {origin['rank']}'s shard of a {origin['world_size']}-rank run" if origin else "incomplete"
        )
        return (
            f"Shampoo: the loaded optimizer state lacks block {b} of parameter {index} (shape {tuple(param.shape)}), "
            f"which this rank owns: the state dict is {source}. Save every rank's shard with "
            "basinlab.optim.save_sharded_state and load them with load_sharded_state (it re-shards to any world size)"
        )

    # ----------------------------------------------------------------- the step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plan = self._plan()
        send = None
        if plan.comm is not None:
            device = self.param_groups[0]["params"][0].device
            send = torch.zeros(plan.layout.segment_size, dtype=self._communication_dtype, device=device)
        index = 0
        for group in self.param_groups:
            indexed = list(enumerate(group["params"], start=index))
            index += len(indexed)
            work = [(i, param, self._owned_blocks(plan, i)) for i, param in self._usable_params(indexed, group)]
            with record_function("shampoo.factor_update"):
                for _, param, owned in work:
                    self._update_statistics(param, group, owned)
            with record_function("shampoo.root"):
                self._compute_roots([(param, owned) for _, param, owned in work], group)
            for i, param, owned in work:
                directions = [(b, block, self._block_direction(param, b, block, group)) for b, block in owned]
                if send is None:
                    self._apply(param, group, self._assemble(param, [(block, d) for _, block, d in directions]))
                else:
                    self._pack(send, plan, i, directions)
        if send is not None:
            self._exchange(send, plan)
        return loss

    # ----------------------------------------------------------------- planning and sharding

    def _signature(self) -> tuple:
        return tuple(
            (tuple(tuple(p.shape) for p in g["params"]), g["max_preconditioner_dim"], g["max_vector_preconditioner_dim"])
            for g in self.param_groups
        )

    def _plan(self) -> "_Plan":
        """Blocks, owners and gather layout for the current parameter groups (cached by shape)."""
        signature = self._signature()
        if self._cached_plan is not None and self._cached_plan.signature == signature:
            return self._cached_plan
        self._refuse_flat_partitions(self.param_groups)
        if not self._comm_resolved:
            self._comm = self._resolve_comm()
            self._comm_resolved = True
        elif self._comm is not None and self._cached_plan is not None and self.state:
            raise RuntimeError(
                "Shampoo (distributed): the parameter groups changed after training started, which would move "
                "blocks between ranks; add every parameter group before the first step"
            )
        blocks = [self._blocks(p, g) for g in self.param_groups for p in g["params"]]
        costs = [block_cost(block.shape, block.dims) for param_blocks in blocks for block in param_blocks]
        layout = None
        if self._comm is not None:
            shapes = [block.shape for param_blocks in blocks for block in param_blocks]
            layout = ShardLayout.build(shapes, costs, self._comm.world_size)
        self._cached_plan = _Plan(signature, blocks, costs, self._comm, layout)
        return self._cached_plan

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As torch's, remembering the group's parameter shapes (see _refuse_flat_partitions)."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["param_shapes"] = [tuple(p.shape) for p in group["params"]]
        self._refuse_flat_partitions([group])

    def _refuse_flat_partitions(self, groups: list[dict[str, Any]]) -> None:
        """DeepSpeed ZeRO >= 1 swaps our parameters for flat 1-D partitions: refuse, loudly.

        The shapes are kept in the group dict itself: ZeRO keeps the dicts but swaps their
        "params", and at stages 1-2 steps one group at a time. ZeRO-3 partitioned
        parameters (built under zero.Init) carry ``ds_id`` and are already flat here.
        """
        for group in groups:
            now = [tuple(p.shape) for p in group["params"]]
            partitioned = any(hasattr(p, "ds_id") for p in group["params"])
            constructed = [tuple(shape) for shape in group.get("param_shapes", now)]
            flattened = now != constructed and all(len(shape) <= 1 for shape in now)
            if partitioned or flattened:
                raise RuntimeError(
                    "Shampoo: its parameters were replaced by flat 1-D partitions, as DeepSpeed ZeRO stage >= 1 "
                    "does; Kronecker factors of flat slices are meaningless. Use ZeRO stage 0: distributed Shampoo "
                    "already shards its own state across data-parallel ranks"
                )

    def _resolve_comm(self) -> "_Comm | None":
        """Decide, once, whether and over which ranks the block work is split."""
        initialized = dist.is_available() and dist.is_initialized()
        if self._distributed is False or (self._distributed is None and not initialized):
            return None
        if not initialized:
            raise RuntimeError(
                "Shampoo(distributed=True) needs torch.distributed initialized before its first step "
                "(accelerate launch / torchrun do it); or pass distributed=None to decide automatically"
            )
        group = self._process_group
        if self._distributed_group_size is not None:
            world = dist.get_world_size()
            if world % self._distributed_group_size:
                raise ValueError(
                    f"Shampoo: distributed_group_size={self._distributed_group_size} does not divide the world "
                    f"size {world}; pick a divisor of {world}"
                )
            group, _ = dist.new_subgroups(self._distributed_group_size)
        world_size = dist.get_world_size(group)
        if world_size == 1 and self._distributed is None:
            return None
        return _Comm(group, dist.get_rank(group), world_size)

    def _owned_blocks(self, plan: "_Plan", index: int) -> list[tuple[int, _Block]]:
        return [(b, block) for b, block in enumerate(plan.blocks[index]) if plan.owns(index, b)]

    def _pack(self, send: torch.Tensor, plan: "_Plan", index: int, directions) -> None:
        """Write this rank's block directions and their 'computed' flags into its segment."""
        base = plan.first_block[index]
        for b, _, direction in directions:
            start = plan.layout.offsets[base + b]
            send[start : start + direction.numel()].copy_(direction.reshape(-1))
            send[plan.layout.flag_offsets[base + b]] = 1

    def _exchange(self, send: torch.Tensor, plan: "_Plan") -> None:
        """All-gather every rank's directions, then apply each parameter whose blocks were all computed."""
        with record_function("shampoo.communication"):
            gathered = send.new_empty(plan.layout.segment_size * plan.comm.world_size)
            dist.all_gather_single(gathered, send, group=plan.comm.group)
            flags = gathered[plan.flag_positions(gathered.device)].tolist()
        index = 0
        for group in self.param_groups:
            for param in group["params"]:
                base, blocks = plan.first_block[index], plan.blocks[index]
                index += 1
                if not all(flags[base : base + len(blocks)]):
                    continue
                directions = []
                for b, block in enumerate(blocks):
                    start = plan.layout.position(base + b)
                    directions.append((block, gathered[start : start + math.prod(block.shape)].view(block.shape)))
                self._apply(param, group, self._assemble(param, directions))

    # ----------------------------------------------------------------- per-parameter work

    def _usable_params(self, indexed, group: dict[str, Any]) -> list[tuple[int, torch.Tensor]]:
        """Parameters with a gradient whose sum of squares is finite in float32."""
        indexed = [(i, p) for i, p in indexed if p.grad is not None]
        if not indexed:
            return []
        squares = torch.stack([torch.dot(g, g) for g in (p.grad.reshape(-1).float() for _, p in indexed)])
        usable = []
        for (i, param), finite in zip(indexed, torch.isfinite(squares).tolist()):
            if finite:
                usable.append((i, param))
                state = self.state[param]
                if "step" not in state:
                    state.update(step=0, roots_computed=0, root_failures=0)
                    state.setdefault("skipped_steps", 0)
                state["step"] += 1
                continue
            if group["nonfinite_grads"] == "raise":
                raise FloatingPointError(
                    f"Shampoo: non-finite or overflowing gradient for a parameter of shape {tuple(param.shape)}; "
                    "pass nonfinite_grads='skip' to skip such steps instead"
                )
            state = self.state[param]
            state["skipped_steps"] = state.get("skipped_steps", 0) + 1
        return usable

    def _blocks(self, param: torch.Tensor, group: dict[str, Any]) -> tuple[_Block, ...]:
        return _param_blocks(
            tuple(param.shape), group["max_preconditioner_dim"], group["max_vector_preconditioner_dim"]
        )

    def _block_keys(self, b: int, block: _Block, group: dict[str, Any]) -> list[str]:
        """The state keys one block owns (eigvecs appear after its first eigenbasis root)."""
        keys = []
        if group["betas"][0] > 0:
            keys.append(f"grad_ema_{b}")
        if group["momentum"] > 0:
            keys.append(f"momentum_buffer_{b}")
        if group["grafting"] in ("adagrad", "rmsprop", "adam"):
            keys.append(f"graft_accumulator_{b}")
        for k in range(len(block.dims)):
            keys += [f"factor_{b}_{k}", f"inv_root_{b}_{k}", f"consecutive_failures_{b}_{k}", f"eigvecs_{b}_{k}"]
        return keys

    def _init_block_state(self, state: dict, param: torch.Tensor, b: int, block: _Block, group) -> None:
        dtype = _factor_dtype(group["factor_dtype"])
        for key in self._block_keys(b, block, group):
            if key.startswith(("grad_ema_", "momentum_buffer_", "graft_accumulator_")):
                state[key] = torch.zeros(block.shape, dtype=param.dtype, device=param.device)
        for k, dim in enumerate(block.dims):
            state[f"factor_{b}_{k}"] = torch.zeros(dim, dim, dtype=dtype, device=param.device)
            state[f"inv_root_{b}_{k}"] = torch.eye(dim, dtype=dtype, device=param.device)
            state[f"consecutive_failures_{b}_{k}"] = 0

    def _update_statistics(self, param: torch.Tensor, group: dict[str, Any], owned) -> None:
        """Advance the Kronecker factors, grafting accumulators and gradient EMA of the owned blocks."""
        state = self.state[param]
        view = param.grad.reshape(matrix_shape(param.shape))
        beta1, beta2 = group["betas"]
        dtype = _factor_dtype(group["factor_dtype"])
        decay, weight = (1.0, 1.0) if beta2 == 1 else (beta2, 1.0 - beta2)
        grafting = group["grafting"]
        for b, block in owned:
            keys = self._block_keys(b, block, group)
            if keys and keys[0] not in state:
                self._init_block_state(state, param, b, block, group)
            grad = view[block.index]
            if len(block.dims) == 1:
                g = grad.to(dtype)
                state[f"factor_{b}_0"].addr_(g, g, beta=decay, alpha=weight)
            elif block.dims:  # beta folds the EMA decay into the GEMM: no separate pass over the factor
                g = grad.to(dtype)
                state[f"factor_{b}_0"].addmm_(g, g.T, beta=decay, alpha=weight)
                state[f"factor_{b}_1"].addmm_(g.T, g, beta=decay, alpha=weight)
            if grafting == "adagrad":
                state[f"graft_accumulator_{b}"].addcmul_(grad, grad)
            elif grafting in ("rmsprop", "adam"):
                gamma = group["grafting_beta2"]
                state[f"graft_accumulator_{b}"].mul_(gamma).addcmul_(grad, grad, value=1 - gamma)
            if beta1 > 0:
                state[f"grad_ema_{b}"].lerp_(grad, 1 - beta1)

    def _start(self, group: dict[str, Any]) -> int:
        start = group["start_preconditioning_step"]
        return group["precondition_frequency"] if start is None else start

    def _compute_roots(self, work: list[tuple[torch.Tensor, list]], group: dict[str, Any]) -> None:
        """Recompute the inverse roots that are due, one factor at a time.

        Not batched on purpose: LAPACK's results depend on a matrix's position in a batch
        (alignment), so batching would tie the bits of a root to which other blocks share
        its rank; on CPU a batched eigh is a loop over the same calls anyway.
        """
        start, frequency = self._start(group), group["precondition_frequency"]
        beta2 = group["betas"][1]
        for param, owned in work:
            state = self.state[param]
            t = state["step"]
            preconditioned = [(b, block) for b, block in owned if block.dims]
            if t < start or (t - start) % frequency or not preconditioned:
                continue
            state["roots_computed"] += 1
            correction = 1.0 if beta2 == 1 else 1.0 - beta2**t
            for b, block in preconditioned:
                root = group["root_override"] or 2 * len(block.dims)
                for k in range(len(block.dims)):
                    self._root(state, f"{b}_{k}", state[f"factor_{b}_{k}"] / correction, root, group)

    def _root(self, state, key: str, factor: torch.Tensor, root: float, group: dict[str, Any]) -> None:
        """One inverse root: warm-started if asked, then exact, then in float64; else keep the old one."""
        warm = group["root_method"] == "eigenbasis" and f"eigvecs_{key}" in state
        for dtype in dict.fromkeys([factor.dtype, torch.float64]):
            try:
                if warm and dtype == factor.dtype:
                    inv_root, vectors = eigenbasis_inverse_root(
                        factor, state[f"eigvecs_{key}"], root, group["epsilon"], pseudo_inverse=group["pseudo_inverse"]
                    )
                else:
                    inv_root, vectors = eigh_inverse_root(
                        factor.to(dtype), root, group["epsilon"], pseudo_inverse=group["pseudo_inverse"]
                    )
            except RuntimeError:  # torch.linalg errors (e.g. eigh did not converge)
                continue
            if inv_root.isfinite().all():
                self._store_root(state, key, inv_root.to(factor.dtype), vectors.to(factor.dtype), group)
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

    def _graft_direction(self, state: dict[str, Any], b: int, m_hat: torch.Tensor, group) -> torch.Tensor:
        grafting = group["grafting"]
        if grafting in ("none", "sgd"):
            return m_hat
        accumulator = state[f"graft_accumulator_{b}"]
        if grafting == "adam":
            accumulator = accumulator / (1 - group["grafting_beta2"] ** state["step"])
        return m_hat / accumulator.sqrt().add_(group["grafting_epsilon"])

    def _block_direction(self, param: torch.Tensor, b: int, block: _Block, group: dict[str, Any]) -> torch.Tensor:
        """One block's search direction: grafted (and preconditioned once started), then momentum."""
        state = self.state[param]
        t = state["step"]
        beta1 = group["betas"][0]
        if beta1 > 0:
            m_hat = state[f"grad_ema_{b}"] / (1 - beta1**t)
        else:
            m_hat = param.grad.reshape(matrix_shape(param.shape))[block.index]
        with record_function("shampoo.graft"):
            direction = self._graft_direction(state, b, m_hat, group)
        if block.dims and t >= self._start(group):
            with record_function("shampoo.precondition"):
                direction = self._precondition(state, b, block, m_hat, direction, group)
        if group["momentum"]:
            buffer = state[f"momentum_buffer_{b}"]
            buffer.mul_(group["momentum"]).add_(direction)
            direction = direction.add(buffer, alpha=group["momentum"]) if group["nesterov"] else buffer
        return direction

    def _precondition(self, state, b: int, block: _Block, m_hat, graft, group) -> torch.Tensor:
        """L^(-1/p) M R^(-1/p), rescaled to the grafting direction's norm, in the parameter's dtype."""
        dtype = _factor_dtype(group["factor_dtype"])
        m = m_hat.to(dtype)
        if len(block.dims) == 1:
            d = state[f"inv_root_{b}_0"] @ m
        else:
            d = state[f"inv_root_{b}_0"] @ m @ state[f"inv_root_{b}_1"]
        if group["grafting"] != "none":  # a zero direction stays zero (0 * finite scale)
            norm = torch.linalg.vector_norm(d).clamp_min(torch.finfo(dtype).tiny)
            d.mul_(torch.linalg.vector_norm(graft.to(dtype)) / norm)
        return d.to(m_hat.dtype)

    @staticmethod
    def _assemble(param: torch.Tensor, directions: list[tuple[_Block, torch.Tensor]]) -> torch.Tensor:
        """The parameter-shaped direction from its blocks' directions."""
        if len(directions) == 1:
            return directions[0][1].reshape(param.shape)
        full = torch.empty(matrix_shape(param.shape), dtype=param.dtype, device=param.device)
        for block, direction in directions:
            full[block.index] = direction
        return full.reshape(param.shape)

    @staticmethod
    def _apply(param: torch.Tensor, group: dict[str, Any], direction: torch.Tensor) -> None:
        lr = group["lr"]
        if group["weight_decay"]:
            param.mul_(1 - lr * group["weight_decay"])
        param.add_(direction.to(param.dtype), alpha=-lr)


@dataclass(frozen=True)
class _Comm:
    group: Any  # a torch.distributed ProcessGroup (None = the default group)
    rank: int
    world_size: int


@dataclass
class _Plan:
    """Blocks of every parameter (flat order over groups) and, distributed, who owns which."""

    signature: tuple
    blocks: list[tuple[_Block, ...]]
    costs: list[int]
    comm: _Comm | None
    layout: ShardLayout | None
    first_block: list[int] = field(init=False)
    _flag_positions: torch.Tensor | None = field(default=None, init=False)

    def __post_init__(self):
        self.first_block = list(itertools.accumulate((len(b) for b in self.blocks), initial=0))[:-1]

    def owns(self, index: int, b: int) -> bool:
        return self.comm is None or self.layout.owners[self.first_block[index] + b] == self.comm.rank

    def flag_positions(self, device: torch.device) -> torch.Tensor:
        if self._flag_positions is None or self._flag_positions.device != device:
            positions = [self.layout.flag_position(i) for i in range(len(self.layout.owners))]
            self._flag_positions = torch.tensor(positions, dtype=torch.long, device=device)
        return self._flag_positions
