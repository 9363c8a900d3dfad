"""Device meshes and the rules that map the model's logical axis names onto them.

Mesh axes: `data` (batch split, parameters replicated), `fsdp` (batch split, parameters
and optimizer state sharded), `tensor` (Megatron-style: attention heads and MLP hidden
units split). The batch is split over data x fsdp. The rules live in the config
(`mesh.rules.<logical name> = "mesh axes, comma separated"`, "" = replicated); mesh axis
names and PartitionSpecs appear nowhere else.
"""

import contextlib
import math
import warnings
from collections.abc import Iterator

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flaxft.errors import InputError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# The vocabulary stays whole on `tensor`: with vocab on tensor and embed on fsdp, XLA on
# CPU computes wrong gradients through the tied MLM decoder on a mesh with all three axes
# > 1 (the forward is right); tests/test_sharding.py shows it on the installed jax.
DEFAULT_RULES = {
    # parameters
    "vocab": "",
    "embed": "fsdp",
    "heads": "tensor",
    "kv": "",
    "mlp": "tensor",
    "hidden": "tensor",
    "position": "",
    "token_type": "",
    "classes": "",
    "layers": "",
    "fused": "",
    "lora": "",  # LoRA ranks are small: replicated; A and B split like their kernel's other axes
    # activations
    "activation_batch": "data,fsdp",
    "activation_length": "",
    "activation_embed": "",
    "activation_heads": "tensor",
    "activation_kv": "",
    "activation_mlp": "tensor",
    "activation_vocab": "",
}

# Under FSDP, a parameter this large left whole on every device is a configuration error.
MAX_REPLICATED_BYTES_UNDER_FSDP = 1 << 20


def default_mesh_config() -> ml_collections.ConfigDict:
    """mesh.data / mesh.fsdp / mesh.tensor sizes (-1 fills the rest) and mesh.rules."""
    return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "rules": dict(DEFAULT_RULES)})


def logical_rules(mesh_config: ml_collections.ConfigDict) -> tuple[tuple[str, tuple[str, ...] | None], ...]:
    """The config's rules as flax logical-axis rules."""
    rules = []
    for name, axes in mesh_config.rules.items():
        parts = tuple(a.strip() for a in axes.split(",") if a.strip())
        unknown = [a for a in parts if a not in MESH_AXES]
        if unknown:
            raise InputError(f"config.mesh.rules.{name}: {unknown[0]!r} is not a mesh axis {MESH_AXES}")
        rules.append((name, parts or None))
    return tuple(rules)


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
    """Sizes of the data, fsdp and tensor axes; one -1 takes what the others leave."""
    sizes = {axis: int(mesh_config[axis]) for axis in MESH_AXES}
    fill = [axis for axis, size in sizes.items() if size == -1]
    if len(fill) > 1 or any(size == 0 or size < -1 for size in sizes.values()):
        raise InputError(f"config.mesh {sizes}: sizes must be positive, with at most one -1")
    known = math.prod(size for size in sizes.values() if size != -1)
    if fill:
        if num_devices % known:
            raise InputError(f"config.mesh {sizes}: {num_devices} devices do not divide by {known}")
        sizes[fill[0]] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
        raise InputError(
            f"config.mesh {sizes} needs {math.prod(sizes.values())} devices but {num_devices} are present"
        )
    return sizes


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
    """The (data, fsdp, tensor) mesh over `devices` (default: all, process-major order,
    so each process's devices hold a contiguous block of the batch)."""
    devices = jax.devices() if devices is None else devices
    sizes = mesh_shape(mesh_config, len(devices))
    grid = np.asarray(devices).reshape([sizes[axis] for axis in MESH_AXES])
    return Mesh(grid, MESH_AXES)


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch is split (data x fsdp)."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def logical_shardings(abstract_boxed, mesh: Mesh, rules):
    """NamedShardings for a tree whose leaves may carry logical axis names (nn.Partitioned,
    e.g. from `jax.eval_shape` of an init); unnamed leaves are replicated. A dimension that
    does not divide by its mesh axes is left unsplit. Same structure as the unboxed tree."""

    def leaf_sharding(leaf):
        if not isinstance(leaf, nn.Partitioned):
            return NamedSharding(mesh, PartitionSpec())
        spec = nn.logical_to_mesh_axes(leaf.names, rules)
        dims = []
        for size, axes in zip(leaf.value.shape, tuple(spec) + (None,) * (leaf.value.ndim - len(spec))):
            names = (axes,) if isinstance(axes, str) else tuple(axes or ())
            dims.append(axes if names and size % math.prod(mesh.shape[a] for a in names) == 0 else None)
        return NamedSharding(mesh, PartitionSpec(*dims))

    return jax.tree.map(leaf_sharding, abstract_boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def bytes_per_device(abstract, shardings) -> int:
    """Bytes one device holds of `abstract` (ShapeDtypeStructs) laid out as `shardings`."""
    total = 0
    for leaf, sharding in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        total += math.prod(sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    return total


def check_fsdp_layout(abstract_params, param_shardings, mesh: Mesh) -> None:
    """Under FSDP (mesh.fsdp > 1) every large parameter must be split: raises InputError
    naming the first one the rules leave whole on every device."""
    if mesh.shape["fsdp"] == 1:
        return
    flat = jax.tree_util.tree_leaves_with_path(abstract_params)
    for (path, leaf), sharding in zip(flat, jax.tree.leaves(param_shardings)):
        nbytes = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
        if nbytes >= MAX_REPLICATED_BYTES_UNDER_FSDP and sharding.is_fully_replicated:
            raise InputError(
                f"config.mesh.fsdp={mesh.shape['fsdp']} but parameter {jax.tree_util.keystr(path)} "
                f"({nbytes / 2**20:.1f} MiB) is replicated on every device: check config.mesh.rules"
            )


@contextlib.contextmanager
def activated(mesh: Mesh, rules: tuple) -> Iterator[None]:
    """Makes `mesh` and the logical-axis `rules` current for the block (model code's
    logical constraints resolve against them). jax deprecates `with mesh:` for
    `jax.set_mesh`, but flax's logical constraints do not work under the latter yet (they
    fail against its abstract mesh), so the deprecation warning is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*`with mesh:` context manager has been deprecated")
        with mesh, nn.logical_axis_rules(rules):
            yield


def mesh_for(mesh_config: ml_collections.ConfigDict, abstract_params, global_batch_size: int,
             grad_accum_steps: int) -> tuple[Mesh, tuple]:
    """The mesh and logical rules of a run, checked against its batch and parameters:
    InputError when the global batch does not divide over the batch shards (x
    microbatches) or the processes, or when FSDP leaves a large parameter whole.

    abstract_params: the model's parameters as logically boxed ShapeDtypeStructs.
    """
    mesh, rules = make_mesh(mesh_config), logical_rules(mesh_config)
    shards = batch_shards(mesh) * grad_accum_steps
    if global_batch_size % shards:
        raise InputError(
            f"config.global_batch_size ({global_batch_size}) does not divide evenly over "
            f"{batch_shards(mesh)} batch shards (mesh data x fsdp) x {grad_accum_steps} microbatches"
        )
    if global_batch_size % jax.process_count():
        raise InputError(
            f"config.global_batch_size ({global_batch_size}) does not divide over {jax.process_count()} processes"
        )
    check_fsdp_layout(nn.meta.unbox(abstract_params), logical_shardings(abstract_params, mesh, rules), mesh)
    return mesh, rules


def describe(mesh: Mesh, abstract_state, state_shardings) -> str:
    """One line: the mesh and the per-device bytes of parameters and optimizer state."""
    params = bytes_per_device(abstract_state.params, state_shardings.params)
    opt = bytes_per_device(abstract_state.opt_state, state_shardings.opt_state)
    return (f"mesh {dict(mesh.shape)} over {mesh.devices.size} {jax.devices()[0].platform} devices; "
            f"per device: parameters {params / 2**20:.1f} MiB, optimizer state {opt / 2**20:.1f} MiB")
