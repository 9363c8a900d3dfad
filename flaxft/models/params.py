"""Parameter trees of any family: fresh ones, their shapes, the two layer layouts, and
refitting a checkpoint's parameters to another head.

Layer layouts: unrolled (`layer_0` ... `layer_{n-1}` under the family's `layers_path`) or
scanned (one `layers` subtree, every leaf with a leading layer axis, after the layers
before the family's `first_scanned_layer`, which stay `layer_{i}`). The numbers are the
same; only the tree differs.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from flaxft.errors import InputError
from flaxft.models.layers import LORA_PARAMS
from flaxft.models.registry import family_of


def init_params(model: nn.Module, rng: jax.Array, seq_len: int = 8) -> dict:
    """Freshly initialised parameters (logically boxed) for `model`."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return model.init(rng, ids)["params"]


def abstract_params(model: nn.Module, seq_len: int = 8, boxed: bool = False) -> dict:
    """ShapeDtypeStructs of `model`'s parameters, with their logical axis names when
    `boxed`; nothing is allocated. Traced once per model (a hashable dataclass) and
    seq_len; each call returns its own containers."""
    shapes = _traced_abstract_params(model, seq_len)
    return jax.tree.map(lambda leaf: leaf, shapes) if boxed else nn.meta.unbox(shapes)


@functools.lru_cache(maxsize=16)
def _traced_abstract_params(model: nn.Module, seq_len: int) -> dict:
    return jax.eval_shape(lambda: init_params(model, jax.random.key(0), seq_len))


def _subtree(params: dict, path: tuple[str, ...]) -> dict:
    for key in path:
        params = params[key]
    return params


def _replaced(params: dict, path: tuple[str, ...], value: dict) -> dict:
    if not path:
        return value
    return {**params, path[0]: _replaced(params[path[0]], path[1:], value)}


def restack(params: dict, model: nn.Module, scan_layers: bool) -> dict:
    """`params` (plain arrays, of `model`'s family) in the requested layer layout,
    converted if they are in the other one. Every layer stack is converted: the family's
    (at its `layers_path`) and those of models nested under a top-level key at the same
    relative path (ELECTRA pretraining's generator)."""
    family = family_of(model)
    path, first = family.layers_path, family.first_scanned_layer
    for nested in [(key, *path) for key, value in params.items() if _has_path(value, path)]:
        params = _restacked(params, nested, scan_layers, first)
    return _restacked(params, path, scan_layers, first)


def _has_path(tree, path: tuple[str, ...]) -> bool:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def _restacked(params: dict, path: tuple[str, ...], scan_layers: bool, first: int) -> dict:
    """`params` with the layer stack at `path` in the requested layout; layers before
    `first` stay `layer_{i}` subtrees in both."""
    stack = _subtree(params, path)
    if scan_layers == ("layers" in stack) or len(stack) <= first:  # (nothing to stack: the same tree)
        return params
    new_stack = {f"layer_{i}": stack[f"layer_{i}"] for i in range(first)}
    if scan_layers:
        layers = [stack[f"layer_{i}"] for i in range(first, len(stack))]
        new_stack["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    else:
        stacked = stack["layers"]
        n = jax.tree.leaves(stacked)[0].shape[0]
        new_stack.update({f"layer_{first + i}": jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n)})
    return _replaced(params, path, new_stack)


def new_params(params: dict, model: nn.Module) -> frozenset[str]:
    """The "/"-joined paths of `model`'s parameters that `params` (any head of its family,
    either layout; arrays or ShapeDtypeStructs) lacks: those `fit_params` initialises
    afresh (a new head, BERT's pooler after a masked-LM checkpoint). Only shapes are used."""
    source = jax.eval_shape(lambda p: restack(nn.meta.unbox(p), model, model.config.scan_layers), params)
    target = traverse_util.flatten_dict(abstract_params(model), sep="/")
    return frozenset(target) - frozenset(traverse_util.flatten_dict(source, sep="/"))


def fit_params(params: dict, model: nn.Module, seed: int = 0) -> dict:
    """`params` (any head of `model`'s family, either layout) refitted to `model`.

    Every encoder parameter `model` needs must be in `params` with the same shape, except
    the family's optional encoder parts (BERT's pooler) and LoRA adapters; those and head
    parameters `params` lacks (a new head on a pretrained encoder) are initialised afresh
    from `seed`; parameters `model` has no use for (another head) are dropped.
    Raises InputError naming the first missing or misshapen parameter.
    """
    family = family_of(model)
    params = restack(nn.meta.unbox(params), model, model.config.scan_layers)
    source = traverse_util.flatten_dict(params)
    target = traverse_util.flatten_dict(abstract_params(model))
    missing = [path for path in target if path not in source]
    required = [p for p in missing if p[0] == family.encoder_key and p[1] not in family.optional_encoder_params
                and p[-1] not in LORA_PARAMS]
    if required:
        raise InputError(f"the checkpoint has no parameter {'/'.join(required[0])}")
    fresh = traverse_util.flatten_dict(nn.meta.unbox(init_params(model, jax.random.key(seed)))) if missing else {}
    out = {}
    for path, want in target.items():
        value = source.get(path, fresh.get(path))
        if tuple(value.shape) != tuple(want.shape):
            raise InputError(
                f"parameter {'/'.join(path)} has shape {tuple(value.shape)} in the checkpoint but the "
                f"model needs {tuple(want.shape)}"
            )
        out[path] = jnp.asarray(value, want.dtype)
    return traverse_util.unflatten_dict(out)
