"""Shampoo: a Kronecker-factored preconditioner, blocked, bucketed and grafted, as a torch optimizer.

For a gradient matrix G (m x n) Shampoo keeps two factors, L = EMA(G G^T) (m x m) and
R = EMA(G^T G) (n x n), and steps along L^(-1/4) G R^(-1/4): a non-diagonal
preconditioner that captures correlations between rows and between columns at the cost
of two small matrices per weight. How each parameter is treated (layout.py):

- Shape: size-1 dims are dropped; a tensor with more than two dims (a conv kernel) is
  viewed as a matrix [dim0, product of the rest]. Vectors (biases, norm weights) and
  scalars take the grafting optimizer's diagonal update, except vectors no longer than
  ``max_vector_preconditioner_dim``, which get one factor (exponent -1/2: full-matrix
  AdaGrad on that vector).
- Blocking: every dim longer than ``max_preconditioner_dim`` is cut into blocks, each
  with its own factors. Blocks of equal shape in a parameter group are stacked into
  buckets and updated with batched GEMMs; the elementwise work is foreach ops.
- Grafting: per block, the Shampoo direction is rescaled to the norm of a simple
  optimizer's direction (SGD, AdaGrad, RMSprop or Adam), which sets the step size; before
  ``start_preconditioning_step`` the grafting direction is used as it is. With
  preconditioning never started Shampoo reproduces torch.optim SGD/Adagrad/RMSprop/Adam(W).

The update of one block at step t (1-based, counted per parameter):

    m   = betas[0]-EMA of the gradient, bias-corrected (the gradient itself if betas[0] = 0)
    L,R = betas[1]-EMA of the Kronecker statistics (sums if betas[1] = 1), bias-corrected
    d   = L^(-1/p) m R^(-1/p)  scaled to the grafting direction's norm
    p  *= 1 - lr * weight_decay                (decoupled)
    buf = momentum * buf + d ;  d = buf, or d + momentum * buf with Nesterov
    p  -= lr * d

Inverse roots are recomputed at ``start_preconditioning_step`` and then every
``precondition_frequency`` steps (optionally staggered over the window: schedule.py), by
eigendecomposition ("eigh"), a warm-started eigenbasis update ("eigenbasis") or the
matmul-only coupled Newton iteration ("newton"); "auto" takes newton on CUDA and eigh
elsewhere (roots.py says why).

Robustness, decided on the device (no host read on a step that refreshes no root): a
parameter whose gradient's sum of squares is not finite in float32 is skipped (its state
and weights stay bitwise as they were; counted); a root that fails (non-finite, or Newton
not converged) keeps the previous one, is retried in float64 by eigh at the end of the
refresh, and ``max_root_failures`` consecutive failures of one block raise. A refresh step
reads the device once (twice if a retry ran). ``diagnostics()`` reads the counters.

Distributed (on by default under torch.distributed with several ranks): every bucket's
state and work lives on one owner rank and one all-gather per step hands every rank all
directions (distribution.py): with float32 communication bitwise the single-process
result. state_dict() holds this rank's buckets; save_sharded_state / load_sharded_state
(checkpoint.py) save and re-shard all of them.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from basinlab.optim import grafting as graft_math
from basinlab.optim.engine import BucketedOptimizer, GroupStep
from basinlab.optim.kronecker import (
    ROOT_METHODS,
    graft_scales,
    init_factors,
    precondition,
    refresh_roots,
    update_factors,
)
from basinlab.optim.layout import Bucket, flatten_diagonal, gather
from basinlab.optim.legacy import upgrade_legacy_state
from basinlab.optim.schedule import is_due, stagger_offsets

FACTOR_DTYPES = {"float32": torch.float32, "float64": torch.float64}
NONFINITE_POLICIES = ("skip", "raise")  # raise: one host read per step, by choice
ROOT_PRECISIONS = ("float32", "tf32")
# Columns of the per-block coefficient table (see _coefficients).
FACTOR_DECAY, GRAFT_DECAY, MOMENTUM_DECAY, EMA_WEIGHT, USABLE, EMA_CORRECTION, GRAFT_CORRECTION = range(7)


def _factor_dtype(value: Any) -> torch.dtype:
    if isinstance(value, torch.dtype) and value in FACTOR_DTYPES.values():
        return value
    if value in FACTOR_DTYPES:
        return FACTOR_DTYPES[value]
    raise ValueError(f"factor_dtype must be one of {', '.join(FACTOR_DTYPES)}, got {value!r}")


class Shampoo(BucketedOptimizer):
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
        stagger_roots: spread the buckets' root recomputations over the frequency window.
        grafting: "none", "sgd", "adagrad", "rmsprop" or "adam".
        grafting_epsilon, grafting_beta2: the grafting optimizer's epsilon and beta2.
        root_override: use L^(-1/root_override) for every factor instead of 2 * order.
        factor_dtype: "float32" or "float64" for factors and roots.
        root_method: "auto", "eigh", "eigenbasis" or "newton".
        root_precision: "float32" or "tf32" (CUDA) for newton's matrix products.
        pseudo_inverse: give numerically-zero eigenvalues weight 0 (eigh/eigenbasis only).
        nonfinite_grads: "skip" (count and skip the parameter's step) or "raise"
            (FloatingPointError; costs one host read per step).
        max_root_failures: consecutive failed roots of one block before raising.
        distributed, communication_dtype, process_group, distributed_group_size: see
            distribution.py (split the bucket work across data-parallel ranks).
    """

    name = "Shampoo"

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
        stagger_roots: bool = False,
        grafting: str = "adam",
        grafting_epsilon: float = 1e-8,
        grafting_beta2: float = 0.999,
        root_override: float | None = None,
        factor_dtype: str | torch.dtype = "float32",
        root_method: str = "auto",
        root_precision: str = "float32",
        pseudo_inverse: bool = False,
        nonfinite_grads: str = "skip",
        max_root_failures: int = 10,
        distributed: bool | None = None,
        communication_dtype: str = "float32",
        process_group: Any = None,
        distributed_group_size: int | None = None,
    ):
        beta1, beta2 = betas
        integral_root = root_override is None or float(root_override).is_integer()
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
            (stagger_roots in (True, False), f"stagger_roots must be True or False, got {stagger_roots!r}"),
            (
                grafting in graft_math.GRAFTINGS,
                f"grafting must be one of {', '.join(graft_math.GRAFTINGS)}, got {grafting!r}",
            ),
            (grafting_epsilon > 0, f"grafting_epsilon must be > 0, got {grafting_epsilon}"),
            (
                0 <= grafting_beta2 < 1 or (grafting_beta2 == 1 and grafting != "adam"),
                f"grafting_beta2 must be in [0, 1) (1 only without adam grafting), got {grafting_beta2}",
            ),
            (root_override is None or root_override > 0, f"root_override must be > 0, got {root_override}"),
            (
                root_method in ("auto",) + ROOT_METHODS,
                f"root_method must be one of auto, {', '.join(ROOT_METHODS)}, got {root_method!r}",
            ),
            (
                root_precision in ROOT_PRECISIONS,
                f"root_precision must be one of {', '.join(ROOT_PRECISIONS)}, got {root_precision!r}",
            ),
            (
                root_method != "newton" or not pseudo_inverse,
                "pseudo_inverse needs root_method 'eigh' or 'eigenbasis' (newton has no eigenvalues to zero)",
            ),
            (
                root_method != "newton" or integral_root,
                f"root_method 'newton' needs an integer root_override, got {root_override}",
            ),
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
            stagger_roots=stagger_roots,
            grafting=grafting,
            grafting_epsilon=grafting_epsilon,
            grafting_beta2=grafting_beta2,
            root_override=root_override,
            factor_dtype=factor_dtype,
            root_method=root_method,
            root_precision=root_precision,
            pseudo_inverse=pseudo_inverse,
            nonfinite_grads=nonfinite_grads,
            max_root_failures=max_root_failures,
        )
        super().__init__(
            params,
            defaults,
            distributed=distributed,
            communication_dtype=communication_dtype,
            process_group=process_group,
            distributed_group_size=distributed_group_size,
        )
        self._constants: dict = {}

    # ----------------------------------------------------------------- public helpers

    def diagnostics(self) -> dict[str, int]:
        """Counts of skipped parameter steps (non-finite gradients), failed root computations and
        parameters whose blocks have been preconditioned. Reads the device (call it when you log).

        Distributed, root counts cover this rank's buckets only.
        """
        skipped = sum(int(s["skipped"].sum().item()) for k, s in self.state.items() if str(k).startswith("group."))
        failures = sum(int(s["root_failures"].sum().item()) for k, s in self.state.items() if str(k).startswith("bucket."))
        return {"skipped_steps": skipped, "root_failures": failures, "preconditioned_params": len(self._preconditioned())}

    def parameter_progress(self, param: torch.Tensor) -> dict[str, int]:
        """Steps taken (with a gradient) and root recomputations of ``param``'s blocks on this rank."""
        plan = self._plan()
        for g, group in enumerate(self.param_groups):
            for index, candidate in enumerate(group["params"]):
                if candidate is param:
                    host = self.state.get(f"group.{g}", {}).get("host_steps", (0,) * len(group["params"]))
                    counts = [
                        n
                        for unit in plan.groups[g].buckets
                        if unit.key in self.state
                        for p, n in zip(unit.row_params(), self.state[unit.key]["refreshes"])
                        if p == index
                    ]
                    return {"steps": host[index], "root_computations": max(counts, default=0)}
        raise ValueError("parameter_progress: the tensor is not one of this optimizer's parameters")

    def _preconditioned(self) -> set[tuple[int, int]]:
        done = set()
        for layout in self._plan().groups:
            for unit in layout.buckets:
                state = self.state.get(unit.key)
                if state:
                    done |= {(unit.group, p) for p, n in zip(unit.row_params(), state["refreshes"]) if n}
        return done

    # ----------------------------------------------------------------- engine hooks

    def _layout_dims(self, group: dict[str, Any]) -> tuple[int, int]:
        return group["max_preconditioner_dim"], group["max_vector_preconditioner_dim"]

    def _offsets(self, layout) -> list[int]:
        """Each bucket's root offset in [1, f] (f for every bucket when not staggered)."""
        if not layout.buckets:
            return []
        group = self.param_groups[layout.buckets[0].group]
        frequency = group["precondition_frequency"]
        if not group["stagger_roots"]:
            return [frequency] * len(layout.buckets)
        return stagger_offsets([b.cost for b in layout.buckets], frequency)

    def _unit_classes(self, groups) -> list[int] | None:
        if not any(g["stagger_roots"] for g in self.param_groups):
            return None
        classes = []
        for layout in groups:
            classes += self._offsets(layout) + ([0] if layout.diagonal is not None else [])
        return classes

    def _offset(self, bucket: Bucket) -> int:
        plan = self._plan()
        cache = self._constants.setdefault(("offsets", plan.signature), {})
        if bucket.key not in cache:
            layout = plan.groups[bucket.group]
            cache.update({b.key: o for b, o in zip(layout.buckets, self._offsets(layout))})
        return cache[bucket.key]

    @staticmethod
    def _start(group: dict[str, Any]) -> int:
        start = group["start_preconditioning_step"]
        return group["precondition_frequency"] if start is None else start

    def _coefficients(self, step: GroupStep, units, dtype: torch.dtype, factor_dtype: torch.dtype):
        """Per unit: its usable-row mask, the seven per-row coefficients (FACTOR_DECAY ...) in ``dtype``
        and the factor decay in ``factor_dtype``, shaped to broadcast against the unit ([B, 1, 1] or [N]).
        Built for all units at once in float64 (as torch.optim's host math), then cast: a handful of ops."""
        group, device = step.group, step.ok.device
        beta1, beta2 = group["betas"]
        gamma = group["grafting_beta2"]
        key = (beta1, beta2, gamma, group["momentum"], device)
        if key not in self._constants:
            on = torch.tensor([beta2, gamma, group["momentum"], 1 - beta1, 1.0], dtype=torch.float64)
            off = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
            bases = torch.tensor([beta1, gamma], dtype=torch.float64)
            self._constants[key] = tuple(t.to(device) for t in (on, off, bases))
        on, off, bases = self._constants[key]
        plan = self._plan()
        index_key = ("rows", tuple(u.key for u in units), device)
        if index_key not in self._constants:
            self._constants[index_key] = torch.cat([plan.rows(u, device) for u in units])
        rows = self._constants[index_key]
        ok = step.ok[rows]
        t = step.steps[rows].clamp_min(1.0)
        exact = torch.cat([torch.where(ok.unsqueeze(1), on, off), 1 - torch.pow(bases, t.unsqueeze(1))], dim=1)
        sizes = [u.size if isinstance(u, Bucket) else u.numel for u in units]
        tables = exact.to(dtype).split(sizes)
        decays = exact[:, FACTOR_DECAY].to(factor_dtype).split(sizes) if factor_dtype != dtype else None
        out = []
        for i, (unit, unit_ok, table) in enumerate(zip(units, ok.split(sizes), tables)):
            if isinstance(unit, Bucket):
                columns = table.view(unit.size, 7, 1, 1).unbind(1)
                decay = decays[i].view(-1, 1, 1) if decays is not None else columns[FACTOR_DECAY]
                out.append((unit_ok.view(-1, 1, 1), columns, decay))
            else:
                out.append((unit_ok, table.unbind(1), None))
        return out

    def _unit_state(self, unit, group: dict[str, Any], like: torch.Tensor) -> dict[str, Any]:
        if unit.key in self.state:
            return self.state[unit.key]
        shape = (unit.size, *unit.block) if isinstance(unit, Bucket) else (unit.numel,)
        state: dict[str, Any] = {}
        if isinstance(unit, Bucket):
            state.update(init_factors(unit, _factor_dtype(group["factor_dtype"]), like.device))
            state["root_failures"] = torch.zeros(unit.size, device=like.device)
            state["consecutive_failures"] = torch.zeros(unit.size, device=like.device)
            state["refreshes"] = (0,) * unit.size
        if group["betas"][0] > 0:
            state["grad_ema"] = torch.zeros(shape, dtype=like.dtype, device=like.device)
        if graft_math.has_accumulator(group["grafting"]):
            state["graft_acc"] = torch.zeros(shape, dtype=like.dtype, device=like.device)
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.state[unit.key] = state
        return state

    def _update_statistics(self, step: GroupStep) -> None:
        group, units = step.group, step.owned
        if group["nonfinite_grads"] == "raise":
            self._raise_on_nonfinite(step)
        if not units:
            return
        params = group["params"]
        coefficients = self._coefficients(step, units, params[0].dtype, _factor_dtype(group["factor_dtype"]))
        grads, states = [], []
        for unit, (ok, _, _) in zip(units, coefficients):
            like = params[unit.tiles[0].param if isinstance(unit, Bucket) else unit.params[0]]
            raw = gather(unit, step.grads) if isinstance(unit, Bucket) else flatten_diagonal(unit, step.grads)
            grads.append(torch.where(ok, raw, 0.0))
            states.append(self._unit_state(unit, group, like))
        beta1, beta2 = group["betas"]
        for unit, state, grad, (_, _, decay) in zip(units, states, grads, coefficients):
            if isinstance(unit, Bucket):
                update_factors(unit, state, grad, decay if beta2 < 1 else None, beta2)
        if beta1 > 0:
            graft_math.update_average([s["grad_ema"] for s in states], grads, [c[EMA_WEIGHT] for _, c, _ in coefficients])
        if graft_math.has_accumulator(group["grafting"]):
            graft_math.accumulate(
                [s["graft_acc"] for s in states], grads, [c[GRAFT_DECAY] for _, c, _ in coefficients],
                group["grafting"], group["grafting_beta2"],
            )
        step.scratch.update(grads=grads, states=states, coefficients=coefficients)

    def _raise_on_nonfinite(self, step: GroupStep) -> None:
        """nonfinite_grads='raise': one host read per step, by the user's choice."""
        bad = [i for i, (has, ok) in enumerate(zip(step.present, step.ok.tolist())) if has and not ok]
        if bad:
            shape = tuple(step.group["params"][bad[0]].shape)
            raise FloatingPointError(
                f"Shampoo: non-finite or overflowing gradient for a parameter of shape {shape}; "
                "pass nonfinite_grads='skip' to skip such steps instead"
            )

    # ----------------------------------------------------------------- roots

    def _row_flags(self, step: GroupStep, bucket: Bucket, test) -> bool | torch.Tensor:
        """True/False when ``test(host step)`` holds for all/none of the bucket's stepping rows, else a mask."""
        flags = tuple(step.present[p] and test(step.host_steps[p]) for p in bucket.row_params())
        if all(flags):
            return True
        if not any(flags):
            return False
        return self._mask(flags, step.ok.device)

    def _refresh(self, steps: list[GroupStep]) -> None:
        """Recompute the due roots of every group; then one read of who failed, a float64 retry of
        those, and (only after a retry) one read of the consecutive-failure counters."""
        pending = []
        for step in steps:
            group = step.group
            start, frequency = self._start(group), group["precondition_frequency"]
            root_method = self._root_method(group, step.ok.device)
            for unit, state in zip(step.owned, step.scratch.get("states", ())):
                if not isinstance(unit, Bucket):
                    continue
                offset = self._offset(unit)
                due = self._row_flags(step, unit, lambda t: is_due(t, start, frequency, offset))
                if due is False:
                    continue
                due = None if due is True else due
                root = group["root_override"] or 2 * unit.order
                options = dict(root=root, epsilon=group["epsilon"], pseudo_inverse=group["pseudo_inverse"])
                correction = self._factor_correction(step, unit, state["left"].dtype)
                failed = refresh_roots(
                    unit, state, correction, due, method=root_method, precision=group["root_precision"], **options
                )
                rows = unit.row_params()
                flags = [True] * unit.size if due is None else [step.present[p] and is_due(step.host_steps[p], start, frequency, offset) for p in rows]
                state["refreshes"] = tuple(n + f for n, f in zip(state["refreshes"], flags))
                pending.append((unit, state, correction, due, failed, options, group))
        if not pending:
            return
        any_failed = torch.stack([failed.any() for *_, failed, _, _ in pending]).tolist()  # the one read
        retried = False
        for (unit, state, correction, due, failed, options, group), flag in zip(pending, any_failed):
            if flag:
                retried = True
                failed = refresh_roots(unit, state, correction, failed, method="eigh", dtype=torch.float64, **options)
                state["root_failures"].add_(failed)
            counters = state["consecutive_failures"]
            reset = counters if due is None else torch.where(due, 0.0, counters)
            counters.copy_(torch.where(failed, counters + 1, 0.0 if due is None else reset))
        if retried:
            limits = [(state["consecutive_failures"].max(), group["max_root_failures"], unit) for unit, state, *_, group in pending]
            worst = torch.stack([m for m, _, _ in limits]).tolist()  # the second read, after a retry only
            for value, (_, limit, unit) in zip(worst, limits):
                if value >= limit:
                    raise RuntimeError(
                        f"Shampoo: the inverse root of a {unit.block[0]}x{unit.block[0]} factor failed {limit} times in a "
                        "row (non-finite or ill-conditioned statistics); try a larger epsilon, factor_dtype='float64' "
                        "or pseudo_inverse=True"
                    )

    def _factor_correction(self, step: GroupStep, bucket: Bucket, dtype: torch.dtype):
        """1 - beta2^t per block ([B, 1, 1], float64 math), or 1 for plain sums."""
        beta2 = step.group["betas"][1]
        if beta2 == 1:
            return 1.0
        t = step.steps[self._plan().rows(bucket, step.ok.device)].clamp_min(1.0)
        return (1 - torch.pow(beta2, t)).to(dtype).view(-1, 1, 1)

    @staticmethod
    def _root_method(group: dict[str, Any], device: torch.device) -> str:
        method = group["root_method"]
        if method != "auto":
            return method
        integral = group["root_override"] is None or float(group["root_override"]).is_integer()
        return "newton" if device.type == "cuda" and integral and not group["pseudo_inverse"] else "eigh"

    # ----------------------------------------------------------------- directions

    def _directions(self, step: GroupStep) -> list[torch.Tensor]:
        group, units = step.group, step.owned
        if not units:
            return []
        grads, states, coefficients = step.scratch["grads"], step.scratch["states"], step.scratch["coefficients"]
        oks = [c[USABLE] for _, c, _ in coefficients]
        if group["betas"][0] > 0:
            moments = torch._foreach_div([s["grad_ema"] for s in states], [c[EMA_CORRECTION] for _, c, _ in coefficients])
        else:
            moments = grads
        accumulators = [s.get("graft_acc") for s in states]
        directions = list(graft_math.directions(
            moments, accumulators, [c[GRAFT_CORRECTION] for _, c, _ in coefficients], group["grafting"], group["grafting_epsilon"]
        ))
        start = self._start(group)
        chosen = []
        for i, unit in enumerate(units):
            if isinstance(unit, Bucket):
                started = self._row_flags(step, unit, lambda t: t >= start)
                if started is not False:
                    chosen.append((i, started, precondition(unit, states[i], moments[i])))
        if chosen:
            preconditioned = [d for *_, d in chosen]
            if group["grafting"] != "none":
                torch._foreach_mul_(preconditioned, graft_scales(preconditioned, [directions[i] for i, *_ in chosen]))
            for (i, started, _), d in zip(chosen, preconditioned):
                d = d.to(directions[i].dtype)
                directions[i] = d if started is True else torch.where(started.view(-1, 1, 1), d, directions[i])
        directions = torch._foreach_mul(directions, oks)
        if group["momentum"] > 0:
            buffers = [s["momentum_buffer"] for s in states]
            decays = [c[MOMENTUM_DECAY] for _, c, _ in coefficients]
            directions = graft_math.apply_momentum(buffers, directions, decays, group["momentum"], group["nesterov"])
            directions = torch._foreach_mul(directions, oks)
        return directions

    # ----------------------------------------------------------------- checkpoints

    def _upgrade_state_dict(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        return upgrade_legacy_state(self, state_dict)
