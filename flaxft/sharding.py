"""Device meshes and the rules that map the model's logical axis names onto them.

Mesh axes: `data` (batch split, parameters replicated), `fsdp` (batch split and
parameters / optimizer state sharded), `tensor` (Megatron-style: attention heads and MLP
hidden units split). The batch is split over data x fsdp.
"""

import math

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flaxft.errors import InputError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axis (None: replicated). Parameters first, then activations.
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("hidden", "tensor"),
    ("position", None),
    ("token_type", None),
    ("classes", None),
    ("layers", None),
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


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
            f"config.mesh {sizes} has {math.prod(sizes.values())} devices but {num_devices} are present"
        )
    return sizes


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
    """The (data, fsdp, tensor) mesh over `devices` (default: all)."""
    devices = jax.devices() if devices is None else devices
    sizes = mesh_shape(mesh_config, len(devices))
    grid = np.asarray(devices).reshape([sizes[axis] for axis in MESH_AXES])
    return Mesh(grid, MESH_AXES)


def batch_size_per_shard(mesh: Mesh) -> int:
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def logical_shardings(abstract_boxed, mesh: Mesh):
    """NamedShardings for a tree whose array leaves may carry logical axis names
    (nn.Partitioned); unnamed leaves are replicated. Same structure as the unboxed tree."""
    specs = nn.get_partition_spec(abstract_boxed)
    return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)
