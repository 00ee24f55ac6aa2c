"""The step machinery every bucketed matrix optimizer shares (Shampoo, SOAP, Muon).

A subclass says what one bucket's statistics, preconditioner refresh and direction are;
this base class does the rest, the same way for all of them:

- the layout (layout.py), rebuilt lazily whenever the parameter shapes change, so
  frameworks that swap parameters after construction (Accelerate FSDP2, DeepSpeed bf16
  master weights) are served; state is keyed by bucket, not by parameter object;
- per step and group: which parameters have a gradient (host-known), which gradients are
  finite (a device mask: one ``_foreach_norm`` for the whole group, no host read), step
  counts (host, for schedules; device, for bias corrections), skipped-step counters;
- decoupled weight decay and the in-place update, as foreach ops;
- distribution over data-parallel ranks (distribution.py) with one all-gather per step;
- FSDP2 parameters (sharded_params.py): each gradient gathered whole, each rank's rows updated;
- ``state_dict`` / ``load_state_dict`` that hold and check this rank's buckets (state_dicts.py).

A step runs in three phases over all groups: statistics, refresh (the subclass may read
the device once or twice here, on the steps that refresh), directions; each is a
torch.profiler range ("shampoo.statistics", ".root", ".directions", ".communication").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.profiler import record_function

from basinlab.optim.distribution import COMMUNICATION_DTYPES, Distribution, resolve_comm
from basinlab.optim.layout import Bucket, DiagonalBucket, GroupLayout, diagonal_pairs, group_layout, scatter_pairs
from basinlab.optim.sharded_params import check_layout, full_gradient, is_sharded, local, local_region
from basinlab.optim.state_dicts import BucketStateDicts

Unit = Bucket | DiagonalBucket


@dataclass
class GroupStep:
    """What one group's step knows: the subclass's phases read it and keep scratch values in it."""

    index: int
    group: dict[str, Any]
    layout: GroupLayout
    grads: list[torch.Tensor]  # one per parameter (zeros where a parameter has none)
    present: tuple[bool, ...]
    ok: torch.Tensor  # [n] bool: gradient present and finite
    steps: torch.Tensor  # [n] float64: steps applied (device), after this one
    host_steps: tuple[int, ...]  # steps with a gradient (host), after this one
    owned: list[Unit]
    scratch: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    signature: tuple
    groups: list[GroupLayout]
    units: list[Unit]  # every group's units, in order: the indices distribution uses
    distribution: Distribution | None
    _index_cache: dict = field(default_factory=dict)
    numbers: dict[str, int] = field(init=False)

    def __post_init__(self):
        self.numbers = {unit.key: i for i, unit in enumerate(self.units)}

    def owns(self, unit: Unit) -> bool:
        return self.distribution is None or self.distribution.owns(self.numbers[unit.key])

    def rows(self, unit: Unit, device: torch.device) -> torch.Tensor:
        """The group-parameter index of each row of ``unit`` (a block, or a diagonal element), on ``device``."""
        key = (unit.key, device)
        if key not in self._index_cache:
            if isinstance(unit, Bucket):
                rows = torch.tensor(unit.row_params, dtype=torch.long)
            else:
                rows = torch.repeat_interleave(torch.tensor(unit.params), torch.tensor(unit.sizes))
            self._index_cache[key] = rows.to(device)
        return self._index_cache[key]


class BucketedOptimizer(BucketStateDicts, torch.optim.Optimizer):
    """Base class; see the module docstring. Subclasses implement the three phases."""

    name = "BucketedOptimizer"

    def __init__(
        self,
        params,
        defaults: dict[str, Any],
        *,
        distributed: bool | None = None,
        communication_dtype: str = "float32",
        process_group: Any = None,
        distributed_group_size: int | None = None,
    ):
        checks = [
            (distributed in (None, True, False), f"distributed must be None, True or False, got {distributed!r}"),
            (
                communication_dtype in COMMUNICATION_DTYPES,
                f"communication_dtype must be one of {', '.join(COMMUNICATION_DTYPES)}, got {communication_dtype!r}",
            ),
            (
                distributed_group_size is None or distributed_group_size >= 1,
                f"distributed_group_size must be >= 1 or None, got {distributed_group_size}",
            ),
            (process_group is None or distributed_group_size is None, "pass process_group or distributed_group_size, not both"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        super().__init__(params, defaults)
        self._distributed = distributed
        self._communication_dtype = COMMUNICATION_DTYPES[communication_dtype]
        self._process_group = process_group
        self._distributed_group_size = distributed_group_size
        self._comm = None
        self._comm_resolved = False
        self._cached_plan: Plan | None = None
        self._masks: dict = {}

    # ------------------------------------------------------------------ subclass hooks

    def _layout_dims(self, group: dict[str, Any]) -> tuple:
        """group_layout's options for a group: (max block dim, longest vector that still gets a factor
        [, one_sided_dim [, elementwise]])."""
        raise NotImplementedError

    def _unit_classes(self, groups: list[GroupLayout]) -> list[int] | None:
        """Per unit (in plan order), the class ownership balances separately (e.g. its refresh step)."""
        return None

    def _update_statistics(self, step: GroupStep) -> None:
        """Advance the statistics of ``step.owned`` (called only when this rank owns some of the group)."""
        raise NotImplementedError

    def _refresh(self, steps: list[GroupStep]) -> None:
        """Recompute preconditioners that are due, for all groups at once."""

    def _directions(self, step: GroupStep) -> list[torch.Tensor]:
        """One direction per owned unit ([B, h, w] or flat), in the parameters' dtype, zero where masked."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plan = self._plan()
        phase = self.name.lower()
        with record_function(f"{phase}.statistics"):
            steps = [s for g, group in enumerate(self.param_groups) if (s := self._group_step(plan, g, group))]
            for step in steps:
                if step.group.get("nonfinite_grads") == "raise":
                    self._raise_on_nonfinite(step)
                if step.owned:
                    self._update_statistics(step)
        with record_function(f"{phase}.root"):
            self._refresh(steps)
        if plan.distribution is None:
            for step in steps:
                with record_function(f"{phase}.directions"):
                    directions = self._directions(step)
                self._apply(step, step.owned, directions)
            return loss
        send = None
        for step in steps:
            with record_function(f"{phase}.directions"):
                directions = self._directions(step)
            if send is None:
                device = self.param_groups[step.index]["params"][0].device
                send = torch.zeros(plan.distribution.segment_size, dtype=self._communication_dtype, device=device)
            for unit, direction in zip(step.owned, directions):
                start = plan.distribution.offsets[plan.numbers[unit.key]]
                send[start : start + unit.numel].copy_(direction.reshape(-1))
        if send is not None:
            with record_function(f"{phase}.communication"):
                gathered = plan.distribution.exchange(send)
            for step in steps:
                units = list(step.layout.units)
                received = []
                for unit in units:
                    start = plan.distribution.position(plan.numbers[unit.key])
                    payload = gathered[start : start + unit.numel]
                    received.append(payload.view(unit.size, *unit.block) if isinstance(unit, Bucket) else payload)
                self._apply(step, units, received)
        return loss

    def _group_step(self, plan: Plan, g: int, group: dict[str, Any]) -> GroupStep | None:
        """Masks and step counts of one group; None when no parameter of the group has a gradient."""
        params = group["params"]
        present = tuple(p.grad is not None for p in params)
        if not any(present):
            return None
        device = params[0].device
        state = self._group_state(g, len(params), device)
        grads = [full_gradient(p.grad) for p in params if p.grad is not None]
        squares = torch.stack(torch._foreach_norm(grads)).float().square()
        finite = squares.isfinite()
        if all(present):
            ok = finite
            state["skipped"].add_(~finite)
        else:
            where = self._mask(present, device)
            ok = torch.zeros(len(params), dtype=torch.bool, device=device).index_copy_(0, self._indices(present, device), finite)
            state["skipped"].add_(where & ~ok)
            whole = iter(grads)
            grads = [next(whole) if has else torch.zeros(p.shape, dtype=p.dtype, device=p.device) for p, has in zip(params, present)]
        state["steps"].add_(ok)
        state["host_steps"] = tuple(t + 1 if has else t for t, has in zip(state["host_steps"], present))
        state["step"] = state.get("step", 0) + 1  # steps this group took, as torch optimizers count them
        owned = [u for u in plan.groups[g].units if plan.owns(u)]
        return GroupStep(g, group, plan.groups[g], grads, present, ok, state["steps"], state["host_steps"], owned)

    def skipped_steps(self) -> int:
        """Parameter steps skipped for a non-finite gradient, over all groups (reads the device)."""
        return sum(int(s["skipped"].sum().item()) for k, s in self.state.items() if str(k).startswith("group."))

    def _raise_on_nonfinite(self, step: GroupStep) -> None:
        """nonfinite_grads='raise': one host read per step, by the user's choice."""
        bad = [i for i, (has, ok) in enumerate(zip(step.present, step.ok.tolist())) if has and not ok]
        if bad:
            shape = tuple(step.group["params"][bad[0]].shape)
            raise FloatingPointError(
                f"{self.name}: non-finite or overflowing gradient for a parameter of shape {shape}; "
                "pass nonfinite_grads='skip' to skip such steps instead"
            )

    def _group_state(self, g: int, n: int, device: torch.device) -> dict[str, Any]:
        key = f"group.{g}"
        if key not in self.state:
            zeros = torch.zeros(n, dtype=torch.float64, device=device)  # float64: exact bias corrections
            self.state[key] = {"steps": zeros, "skipped": zeros.clone(), "host_steps": (0,) * n}
        return self.state[key]

    def _mask(self, flags: tuple[bool, ...], device: torch.device) -> torch.Tensor:
        """A cached device bool tensor for a host pattern (dead layers repeat theirs every step)."""
        key = (flags, device)
        if key not in self._masks:
            self._masks[key] = torch.tensor(flags, dtype=torch.bool).to(device)
        return self._masks[key]

    def _indices(self, flags: tuple[bool, ...], device: torch.device) -> torch.Tensor:
        """The positions of a host pattern's set flags, cached on the device (indexing with them, unlike
        with a bool mask, needs no host sync)."""
        key = ("indices", flags, device)
        if key not in self._masks:
            self._masks[key] = torch.tensor([i for i, f in enumerate(flags) if f], dtype=torch.long).to(device)
        return self._masks[key]

    def _apply(self, step: GroupStep, units: list[Unit], directions: list[torch.Tensor]) -> None:
        """p *= 1 - lr * weight_decay (where the gradient was usable), then p -= lr * direction.

        A sharded parameter's directions are first copied into a whole-size buffer, whose rows of
        this rank's shard then update the shard: the same operation on every element as unsharded.
        """
        group, params = step.group, step.group["params"]
        lr, decay = group["lr"], group.get("weight_decay", 0.0)
        if decay:
            usable = [local(p) for p, has in zip(params, step.present) if has]
            kept = torch.scalar_tensor(1.0 - lr * decay, dtype=params[0].dtype, device=step.ok.device)  # not float32 for float64
            factors = torch.where(step.ok, kept, 1.0)
            if not all(step.present):
                factors = factors[self._indices(step.present, factors.device)]
            torch._foreach_mul_(usable, list(factors.unbind()))
        whole = {i: torch.zeros(p.shape, dtype=p.dtype, device=p.device) for i, p in enumerate(params) if is_sharded(p)}
        targets = [whole.get(i, p) for i, p in enumerate(params)]
        updates, sources, copies, copied = [], [], [], []
        for unit, direction in zip(units, directions):
            if isinstance(unit, Bucket):
                owners, pairs = [tile.param for tile in unit.tiles], scatter_pairs(unit, targets, direction)
            else:
                owners, pairs = list(unit.params), diagonal_pairs(unit, targets, direction)
            for i, target, source in zip(owners, *pairs):
                source = source.to(target.dtype) if direction.dtype != target.dtype else source
                (copies if i in whole else updates).append(target)
                (copied if i in whole else sources).append(source)
        if copies:
            torch._foreach_copy_(copies, copied)
            for i, buffer in whole.items():
                updates.append(local(params[i]))
                sources.append(buffer[local_region(params[i])])
        if updates:
            torch._foreach_add_(updates, sources, alpha=-lr)

    # ------------------------------------------------------------------ layout and distribution

    def _signature(self) -> tuple:
        return tuple((tuple(tuple(p.shape) for p in g["params"]), self._layout_dims(g)) for g in self.param_groups)

    def _plan(self) -> Plan:
        """Buckets and owners for the current parameter groups (cached by shape)."""
        signature = self._signature()
        if self._cached_plan is not None and self._cached_plan.signature == signature:
            return self._cached_plan
        self._refuse_flat_partitions(self.param_groups)
        for group in self.param_groups:
            check_layout(group["params"], self.name)
        if not self._comm_resolved:
            self._comm = resolve_comm(self._distributed, self._process_group, self._distributed_group_size, self.name)
            self._comm_resolved = True
        elif self._comm is not None and self._cached_plan is not None and self.state:
            raise RuntimeError(
                f"{self.name} (distributed): the parameter groups changed after training started, which would move "
                "buckets between ranks; add every parameter group before the first step"
            )
        groups = [
            group_layout(g, [tuple(p.shape) for p in group["params"]], *self._layout_dims(group))
            for g, group in enumerate(self.param_groups)
        ]
        units = [u for layout in groups for u in layout.units]
        distribution = None
        if self._comm is not None:
            sizes, costs = [u.numel for u in units], [u.cost for u in units]
            distribution = Distribution.build(self._comm, sizes, costs, self._unit_classes(groups))
        self._cached_plan = Plan(signature, groups, units, distribution)
        return self._cached_plan

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As torch's, remembering the group's parameter shapes (see _refuse_flat_partitions)."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["param_shapes"] = [tuple(p.shape) for p in group["params"]]
        self._refuse_flat_partitions([group])

    def _refuse_flat_partitions(self, groups: list[dict[str, Any]]) -> None:
        """DeepSpeed ZeRO >= 1 and FSDP1 swap our parameters for flat 1-D partitions: refuse, loudly.

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
                    f"{self.name}: its parameters were replaced by flat 1-D partitions, as DeepSpeed ZeRO stage >= 1 "
                    "and FSDP1 do; Kronecker factors of flat slices are meaningless. Use ZeRO stage 0 or FSDP2 "
                    f"(fully_shard; Accelerate fsdp_version: 2): the distributed {self.name} already shards its own "
                    "state across data-parallel ranks"
                )

    def sharding(self) -> dict[str, Any] | None:
        """World size, this rank, the owner and cost of every bucket and the summed cost per rank;
        None when not distributed (the first step, or load_state_dict, decides)."""
        plan = self._plan()
        if plan.distribution is None:
            return None
        costs = [u.cost for u in plan.units]
        return {
            "world_size": plan.distribution.comm.world_size,
            "rank": plan.distribution.comm.rank,
            "owners": list(plan.distribution.owners),
            "units": [u.key for u in plan.units],
            "loads": plan.distribution.loads(costs),
        }
