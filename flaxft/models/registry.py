"""The model families flaxft knows, and lookups by name, Hugging Face `model_type` and
architecture. Adding a family is one line here (see docs/adding_a_family.md)."""

import flax.linen as nn

from flaxft.errors import InputError
from flaxft.models import bert, electra, modernbert, roberta
from flaxft.models.family import Family

FAMILIES: dict[str, Family] = {
    family.name: family for family in (bert.FAMILY, roberta.FAMILY, roberta.XLM_ROBERTA_FAMILY, electra.FAMILY,
                                           modernbert.FAMILY)
}

# Every head of every family, by transformers architecture name (unique across families).
ARCHITECTURES: dict[str, type[nn.Module]] = {
    name: cls for family in FAMILIES.values() for name, cls in family.architectures.items()
}


def family_named(name: str) -> Family:
    """The family called `name` (config.model.family); InputError naming the known ones."""
    if name not in FAMILIES:
        raise InputError(f"config.model.family {name!r} is not one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_for_model_type(model_type: str | None, source: str) -> Family:
    """The family that reads Hugging Face folders of `model_type`; InputError naming
    `source` and the supported model_types."""
    for candidate in FAMILIES.values():
        if model_type in candidate.model_types:
            return candidate
    supported = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise InputError(f"{source}: model_type {model_type!r} is not supported (flaxft reads {supported})")


def family_of(architecture: str | nn.Module) -> Family:
    """The family an architecture name (or a model of it) belongs to."""
    name = architecture if isinstance(architecture, str) else type(architecture).__name__
    for candidate in FAMILIES.values():
        if name in candidate.architectures:
            return candidate
    raise InputError(f"unknown architecture {name!r} (flaxft has {sorted(ARCHITECTURES)})")
