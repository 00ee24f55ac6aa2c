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

from typing import Any

import torch

from basinlab.optim import grafting as graft_math
from basinlab.optim import shampoo_math
from basinlab.optim.coefficients import CoefficientTable, UnitCoefficients
from basinlab.optim.engine import BucketedOptimizer, GroupStep
from basinlab.optim.kronecker import RootJob, init_factors, refresh_roots, settle_refreshes
from basinlab.optim.layout import Bucket, unit_gradients, unit_param
from basinlab.optim.legacy import upgrade_legacy_state
from basinlab.optim.schedule import is_due, stagger_offsets
from basinlab.optim.shampoo_math import FACTOR_CORRECTION, FACTOR_DECAY, GroupSettings
from basinlab.optim.shampoo_options import check_options, factor_dtype_of

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
        torch_compile: run the per-group statistics and direction math through torch.compile
            (compiled once per layout; root refreshes stay eager).
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
        torch_compile: bool = False,
        distributed: bool | None = None,
        communication_dtype: str = "float32",
        process_group: Any = None,
        distributed_group_size: int | None = None,
    ):
        options = dict(
            lr=lr,
            betas=tuple(betas),
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
        defaults = check_options(options)
        distribution = dict(distributed=distributed, communication_dtype=communication_dtype,
                            process_group=process_group, distributed_group_size=distributed_group_size)
        super().__init__(params, defaults, **distribution)
        self._constants: dict = {}
        self._table = CoefficientTable()
        if torch_compile not in (True, False):
            raise ValueError(f"torch_compile must be True or False, got {torch_compile!r}")
        self._torch_compile = torch_compile
        self._compiled: dict = {}

    # ----------------------------------------------------------------- public helpers

    def diagnostics(self) -> dict[str, int]:
        """Counts of skipped parameter steps (non-finite gradients), failed root computations and
        parameters whose blocks have been preconditioned. Reads the device (call it when you log).

        Distributed, root counts cover this rank's buckets only.
        """
        skipped = self.skipped_steps()
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
                        for p, n in zip(unit.row_params, self.state[unit.key]["refreshes"])
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
                    done |= {(unit.group, p) for p, n in zip(unit.row_params, state["refreshes"]) if n}
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

    def _coefficients(self, step: GroupStep, units) -> list[UnitCoefficients]:
        group = step.group
        beta1, beta2 = group["betas"]
        gamma = group["grafting_beta2"]
        return self._table.build(
            self._plan(), step, units,
            keep=(beta2, gamma, group["momentum"]),
            gate=(1 - beta1, 1.0),
            corrections=(beta1, gamma, 0.0 if beta2 == 1 else beta2),  # 1 - 0^t = 1: sums need none
            dtype=group["params"][0].dtype,
            factor_dtype=factor_dtype_of(group["factor_dtype"]),
            factor_columns=(FACTOR_DECAY, FACTOR_CORRECTION),
        )

    def _unit_state(self, unit, group: dict[str, Any], like: torch.Tensor) -> dict[str, Any]:
        if unit.key in self.state:
            return self.state[unit.key]
        shape = (unit.size, *unit.block) if isinstance(unit, Bucket) else (unit.numel,)
        state: dict[str, Any] = {}
        if isinstance(unit, Bucket):
            state.update(init_factors(unit, factor_dtype_of(group["factor_dtype"]), like.device))
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
        params = group["params"]
        coefficients = self._coefficients(step, units)
        raw = unit_gradients(units, step.grads)
        states = [self._unit_state(unit, group, unit_param(unit, params)) for unit in units]
        settings = self._settings(group, units)
        grads = self._math("statistics")(
            settings,
            raw,
            [c.usable for c in coefficients],
            [c.columns for c in coefficients],
            [c.factor_columns[0] if c.factor_columns else None for c in coefficients],
            self._table.zero(raw[0]),
            [s.get("left") for s in states],
            [s.get("right") for s in states],
            [s.get("grad_ema") for s in states],
            [s.get("graft_acc") for s in states],
        )
        step.scratch.update(grads=grads, states=states, coefficients=coefficients, settings=settings)

    # ----------------------------------------------------------------- roots

    def _row_flags(self, step: GroupStep, bucket: Bucket, test) -> tuple[bool, ...]:
        """Per stacked block: its parameter has a gradient this step and ``test(its host step)`` holds."""
        return tuple(step.present[p] and test(step.host_steps[p]) for p in bucket.row_params)

    def _as_mask(self, flags: tuple[bool, ...], device: torch.device) -> torch.Tensor | None:
        """None when every flag is set (the common case: no mask op), else a cached device mask."""
        return None if all(flags) else self._mask(flags, device)

    def _refresh(self, steps: list[GroupStep]) -> None:
        """Recompute the due roots of every group, then settle failures for the whole step at once."""
        jobs = []
        for step in steps:
            group = step.group
            start, frequency = self._start(group), group["precondition_frequency"]
            method = self._root_method(group, step.ok.device)
            for unit, state, c in zip(step.owned, step.scratch.get("states", ()), step.scratch.get("coefficients", ())):
                if not isinstance(unit, Bucket):
                    continue
                offset = self._offset(unit)
                flags = self._row_flags(step, unit, lambda t: is_due(t, start, frequency, offset))
                if not any(flags):
                    continue
                due = self._as_mask(flags, step.ok.device)
                options = dict(
                    root=group["root_override"] or 2 * unit.order, epsilon=group["epsilon"], pseudo_inverse=group["pseudo_inverse"]
                )
                correction = c.factor_columns[1] if group["betas"][1] < 1 else 1.0
                failed = refresh_roots(unit, state, correction, due, method=method, precision=group["root_precision"], **options)
                state["refreshes"] = tuple(n + f for n, f in zip(state["refreshes"], flags))
                jobs.append(RootJob(unit, state, correction, due, failed, options, group["max_root_failures"]))
        settle_refreshes(jobs)

    @staticmethod
    def _root_method(group: dict[str, Any], device: torch.device) -> str:
        method = group["root_method"]
        if method != "auto":
            return method
        integral = group["root_override"] is None or float(group["root_override"]).is_integer()
        return "newton" if device.type == "cuda" and integral and not group["pseudo_inverse"] else "eigh"

    # ----------------------------------------------------------------- directions

    def _directions(self, step: GroupStep) -> list[torch.Tensor]:
        if not step.owned:
            return []
        start = self._start(step.group)
        started = []
        for unit in step.owned:
            flags = self._row_flags(step, unit, lambda t: t >= start) if isinstance(unit, Bucket) else (False,)
            started.append(any(flags) and (self._as_mask(flags, step.ok.device) if not all(flags) else True))
        states = step.scratch["states"]
        return self._math("directions")(
            step.scratch["settings"],
            tuple(started),
            step.scratch["grads"],
            [c.columns for c in step.scratch["coefficients"]],
            [s.get("left_root") for s in states],
            [s.get("right_root") for s in states],
            [s.get("grad_ema") for s in states],
            [s.get("graft_acc") for s in states],
            [s.get("momentum_buffer") for s in states],
        )

    def _settings(self, group: dict[str, Any], units) -> GroupSettings:
        return GroupSettings(
            sides=tuple(u.sides if isinstance(u, Bucket) else None for u in units),
            betas=tuple(group["betas"]),
            grafting=group["grafting"],
            grafting_beta2=group["grafting_beta2"],
            grafting_epsilon=group["grafting_epsilon"],
            momentum=group["momentum"],
            nesterov=group["nesterov"],
        )

    def _math(self, name: str):
        """shampoo_math's ``name``, compiled once per optimizer with torch_compile=True."""
        function = getattr(shampoo_math, name)
        if not self._torch_compile:
            return function
        if name not in self._compiled:
            self._compiled[name] = torch.compile(function, dynamic=False)
        return self._compiled[name]

    # ----------------------------------------------------------------- checkpoints

    def _upgrade_state_dict(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        return upgrade_legacy_state(self, state_dict)
