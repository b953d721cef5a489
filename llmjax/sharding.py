"""Every partitioning decision, in one place: the device mesh, the logical axes of each parameter
and activation, and the rules that map logical axes onto mesh axes.

Mesh axes: `data` (batch only), `fsdp` (batch, and parameters and optimizer state split along
their model dimension, gathered for each matmul: ZeRO-3; a mixture of experts' experts, whole
ones per device, where the axis divides their number: expert parallelism), `sequence` (context
parallelism: every activation split along its tokens, attention's keys and values gathered
whole; parameters and optimizer state split as over fsdp) and `tensor` (heads, MLP hidden
units and vocabulary split across devices: Megatron). A dimension that does not divide evenly
by its mesh axes stays whole (replicated) rather than failing, so tiny models run on any mesh.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

# outermost first: jax.make_mesh gives the last axes the closest devices, so tensor (two
# activation all-reduces per layer) gets them, then sequence (a key/value gather per layer)
MESH_AXES = ("data", "fsdp", "sequence", "tensor")

# Logical axis -> mesh axes. 'embed' is a parameter's model dimension; activations keep theirs
# whole ('act_embed'), so FSDP gathers weights instead of splitting activations.
RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    # a mixture's expert axis (GShard): E / fsdp whole experts per device, which then keep
    # their model dimension whole (an axis splits one dimension of an array); the tokens
    # travel to them (all-to-all) instead of every expert's weights to every device. A count
    # the axis does not divide leaves the experts to shard as dense layers do.
    "expert": ("fsdp",),
    # the sequence axis's devices each hold a slice of the tokens, not of the batch; the state
    # splits over them too (as MaxText's context axis), else each would hold all of it
    "embed": ("fsdp", "sequence"),
    # an activation's tokens (context parallelism); queries keep theirs split, attention's keys
    # and values are constrained whole, so XLA gathers them along it
    "length": ("sequence",),
    "vocab": ("tensor",),
    "heads": ("tensor",),
    "mlp": ("tensor",),
}

# Parameter path (its end, as checkpoint.param_path_name writes it) -> logical axes; the first
# match wins. Optimizer-state leaves (Adam's mu and nu) end in the same paths and follow them.
PARAM_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"(query|key|value)/kernel", ("embed", "heads", "kv")),
    # latent attention's up-projections [r, H, K] (models/latent_attention.py); its down-
    # projections [D, r] are the plain kernels below
    (r"(key_up|value_up)/kernel", (None, "heads", "kv")),
    (r"(query|key|value)/bias", ("heads", "kv")),
    (r"attention/out/kernel", ("heads", "kv", "embed")),
    # mixture-of-experts kernels [E, D, F] / [E, F, D] (models/moe.py)
    (r"experts/(wi|wg)/kernel", ("expert", "embed", "mlp")),
    (r"experts/(wi|wg)/bias", ("expert", "mlp")),
    (r"experts/wo/kernel", ("expert", "mlp", "embed")),
    (r"mlp/router", ("embed", None)),
    (r"(wi|wg)/kernel", ("embed", "mlp")),
    (r"(wi|wg)/bias", ("mlp",)),
    (r"wo/kernel", ("mlp", "embed")),
    (r"(^|/)embed/embedding", ("vocab", "embed")),  # the token table (tied output projection)
    (r"lm_head/kernel", ("embed", "vocab")),
    (r"(lm_head/bias|output_bias)", ("vocab",)),
    (r"relative_bias/embedding", (None, "heads")),
    (r"embedding", (None, "embed")),  # position and token-type tables
    (r"kernel", ("embed", None)),  # poolers, head transforms, classifiers: [D, out]
)


def _given_sizes(sizes: ml_collections.ConfigDict | dict) -> dict[str, int]:
    """parallel.mesh as {axis: size}; an axis it lacks (an older config) is 1."""
    return {axis: int(sizes.get(axis, 1)) for axis in MESH_AXES}


def mesh_shape(sizes: ml_collections.ConfigDict | dict, num_devices: int) -> dict[str, int]:
    """The mesh sizes with -1 resolved for `num_devices`, without building a mesh."""
    sizes = _given_sizes(sizes)
    known = math.prod(s for s in sizes.values() if s != -1)
    return {a: (num_devices // max(known, 1) if s == -1 else s) for a, s in sizes.items()}


def model_axes(sizes: dict[str, int]) -> dict[str, int]:
    """The resolved mesh axes beyond `data` that have more than one device: those that split
    the model's state (fsdp, sequence, tensor); empty on a data-only mesh."""
    return {axis: size for axis, size in sizes.items() if axis != "data" and size > 1}


def mesh_problem(sizes: ml_collections.ConfigDict | dict, num_devices: int,
                 num_processes: int) -> str | None:
    """Why `sizes` cannot be the mesh of this run (None if it can)."""
    sizes = _given_sizes(sizes)
    if sum(s == -1 for s in sizes.values()) > 1 or any(s == 0 or s < -1
                                                       for s in sizes.values()):
        return f"parallel.mesh {sizes}: sizes must be positive, with at most one -1 (the rest)"
    resolved = mesh_shape(sizes, num_devices)
    if math.prod(resolved.values()) != num_devices:
        return (f"parallel.mesh {sizes} does not fit the {num_devices} devices: make data x "
                f"fsdp x sequence x tensor = {num_devices}, or set one of them to -1")
    if (resolved["data"] * resolved["fsdp"]) % num_processes:
        return (f"parallel.mesh {resolved}: data x fsdp must be a multiple of the "
                f"{num_processes} processes (each process feeds its own examples)")
    return None


def make_mesh(sizes: ml_collections.ConfigDict | dict) -> Mesh:
    """A (data, fsdp, sequence, tensor) mesh over all devices; one size may be -1 (the
    rest)."""
    problem = mesh_problem(sizes, jax.device_count(), jax.process_count())
    if problem:
        raise ValueError(problem)
    shape = mesh_shape(sizes, jax.device_count())
    # Auto axes: XLA propagates shardings (Explicit axes break gathers, see DESIGN.md)
    return jax.make_mesh(tuple(shape[a] for a in MESH_AXES), MESH_AXES,
                         axis_types=(AxisType.Auto,) * len(MESH_AXES))


def spec(logical: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """PartitionSpec for an array of `shape` with these logical axes; a dimension whose size the
    mesh axes do not divide stays whole."""
    parts = []
    used: set[str] = set()
    for name, size in zip(logical, shape, strict=True):
        axes = tuple(a for a in RULES.get(name, ()) if mesh.shape[a] > 1 and a not in used)
        if axes and size % math.prod(mesh.shape[a] for a in axes) == 0:
            parts.append(axes if len(axes) > 1 else axes[0])
            used.update(axes)
        else:
            parts.append(None)
    return PartitionSpec(*parts)


def param_logical_axes(path: str, ndim: int) -> tuple[str | None, ...]:
    """Logical axes of the parameter (or optimizer-state leaf) at `path`; replicated if no
    rule names it."""
    for pattern, axes in PARAM_AXES:
        if re.search(pattern + "$", path) and len(axes) == ndim:
            return axes
    return (None,) * ndim


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
    """NamedShardings for a train state (or params) pytree of arrays or ShapeDtypeStructs."""
    from llmjax.train.checkpoint import param_path_name  # noqa: PLC0415

    def sharding(path, leaf) -> NamedSharding:
        shape = tuple(np.shape(leaf))
        logical = param_logical_axes(param_path_name(path), len(shape))
        return NamedSharding(mesh, spec(logical, shape, mesh))

    return jax.tree_util.tree_map_with_path(sharding, abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches: the leading (example) axis split over data x fsdp."""
    return NamedSharding(mesh, PartitionSpec(tuple(a for a in RULES["batch"])))


_ACTIVE_MESH: list[Mesh] = []


@contextlib.contextmanager
def activation_sharding(mesh: Mesh) -> Iterator[None]:
    """While active (around tracing a step), `constrain` pins activations to the mesh."""
    _ACTIVE_MESH.append(mesh)
    try:
        yield
    finally:
        _ACTIVE_MESH.pop()


def splits(logical: str) -> bool:
    """Whether the mesh step being traced splits the logical axis over more than one device."""
    if not _ACTIVE_MESH:
        return False
    mesh = _ACTIVE_MESH[-1]
    return math.prod(mesh.shape[axis] for axis in RULES[logical]) > 1


def constrain(x: jax.Array, logical: tuple[str | None, ...]) -> jax.Array:
    """x with a sharding constraint from its logical axes ('batch', 'heads', 'mlp', ...) when a
    mesh step is being traced; unchanged otherwise (one device, pmap, decoding)."""
    if not _ACTIVE_MESH:
        return x
    mesh = _ACTIVE_MESH[-1]
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec(logical, x.shape, mesh)))
