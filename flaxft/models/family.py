"""What a model family is: the contract every family module fills in.

A family (BERT today) is one package under `flaxft.models` that declares a `Family`:
its config dataclass (Hugging Face field names, a `ModelConfig`), its modules and heads
by role, where its encoder and layer stack sit in the parameter tree, its Hugging Face
format (`HFFormat`: config.json and state-dict names, read and written through one
table), its tokenizer kind and its training FLOPs. `flaxft.models.registry` lists the
families; nothing else in flaxft names one. The guide for adding a family is
docs/adding_a_family.md.
"""

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from flaxft.errors import InputError
from flaxft.models.attention import check_attention, describe_attention, resolve_attention
from flaxft.models.matmul import fast_compute_dtype

Array = jax.Array

# The heads a family provides, by what a task needs of them, named as transformers names
# the classes: <Family>Model, ForPreTraining, ForMaskedLM, ForSequenceClassification, ...
HEAD_ROLES = (
    "encoder",  # bare encoder: last_hidden_state (and pooler_output where the family has one)
    "pretraining",  # the family's own pretraining model (BERT: MLM + next sentence; ELECTRA: generator + discriminator)
    "masked_lm",
    "replaced_token_detection",  # ELECTRA's discriminator: per-token logits, replaced or not
    "sequence_classification",
    "token_classification",
    "question_answering",
)
# Rematerialisation of each layer in the backward pass (config field remat_policy).
REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}
REMAT_POLICIES = ("none", *REMAT)


@flax.struct.dataclass
class EncoderOutput:
    """What every flaxft model returns; heads fill in their own fields.

    last_hidden_state [B, L, D], or [B, M, D] when an MLM head was given M masked
    positions per row; pooler_output [B, D] (None without a pooler);
    mlm_logits [B, L, V] or [B, M, V] at masked positions; nsp_logits [B, 2];
    logits [B, num_labels] (sequence) or [B, L, num_labels] (token);
    start_logits / end_logits [B, L];
    sampled_ids [B, M]: ELECTRA pretraining's generator samples at the masked positions
    (the tokens its discriminator saw there).
    """

    last_hidden_state: Array
    pooler_output: Array | None = None
    mlm_logits: Array | None = None
    nsp_logits: Array | None = None
    logits: Array | None = None
    start_logits: Array | None = None
    end_logits: Array | None = None
    sampled_ids: Array | None = None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Fields every family's config has besides its Hugging Face fields.

    A family's config subclasses this and adds its Hugging Face config fields, under their
    Hugging Face names; every family has at least vocab_size, hidden_size,
    num_hidden_layers, max_position_embeddings and initializer_range.

    num_labels, id2label: the classification head's size and class names.
    Training options (not in Hugging Face's config.json):
      dtype: compute dtype of activations and matrix products ("float32", "bfloat16",
        or "auto": `flaxft.models.matmul.fast_compute_dtype` on the backend it runs on).
      param_dtype: dtype parameters are stored in.
      scan_layers: stack the encoder layers under `nn.scan` (one compiled layer body).
      remat_policy: rematerialisation of each layer in the backward pass:
        "none", "full" (save nothing), "dots" (save matmul outputs),
        "dots_no_batch" (save matmul outputs without batch dimensions).
      attention: the attention implementation, `flaxft.models.attention`'s: "xla"
        (explicit softmax, the only one with attention-probability dropout), "dot_product"
        (`jax.nn.dot_product_attention`), "flash" (Pallas flash attention, no sliding
        windows), or "auto" (`flaxft.models.attention.resolve_attention`: per backend, and
        "xla" for calls that apply attention dropout).
      lora_rank, lora_alpha, lora_dropout, lora_targets (LORA_FIELDS; a run sets them
        from its `peft` config group, never as model.* keys): with lora_rank r > 0, every
        dense layer whose kernel path matches the regex lora_targets (re.search) adds
        (alpha / r) * dropout(x) A B to its output (`flaxft.models.layers.Dense`);
        lora_rank 0 is no LoRA.
    """

    LORA_FIELDS: ClassVar[tuple[str, ...]] = ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets")
    TRAINING_OPTIONS: ClassVar[tuple[str, ...]] = (
        "dtype", "param_dtype", "scan_layers", "remat_policy", "attention", *LORA_FIELDS
    )
    DROPOUT_FIELDS: ClassVar[tuple[str, ...]] = ()  # a family's dropout rates: a run's config sets them
    ATTENTION_DROPOUT_FIELD: ClassVar[str] = ""  # the one on attention probabilities ("": none)

    num_labels: int = 2
    id2label: tuple[str, ...] = ()
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention: str = "auto"
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_dropout: float = 0.0
    lora_targets: str = ""

    def __post_init__(self):
        if self.remat_policy not in REMAT_POLICIES:
            raise InputError(f"model.remat_policy {self.remat_policy!r} is not one of {REMAT_POLICIES}")
        for field in ("dtype", "param_dtype"):
            if field == "dtype" and self.dtype == "auto":
                continue
            try:
                jnp.dtype(getattr(self, field))
            except TypeError:
                raise InputError(f"model.{field} {getattr(self, field)!r} is not a dtype") from None
        if self.num_labels < 1:
            raise InputError(f"model.num_labels must be positive, got {self.num_labels}")
        if self.id2label and len(self.id2label) != self.num_labels:
            raise InputError(
                f"model.id2label has {len(self.id2label)} names but model.num_labels is {self.num_labels}"
            )
        check_attention(self.attention, self.ATTENTION_DROPOUT_FIELD, self.attention_dropout_rate,
                        self.sliding_window_fields())

    @property
    def max_seq_len(self) -> int:
        """The longest row the position embeddings allow."""
        return self.max_position_embeddings

    @property
    def compute_dtype(self) -> jnp.dtype:
        return fast_compute_dtype()[0] if self.dtype == "auto" else jnp.dtype(self.dtype)

    @property
    def weights_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @property
    def attention_dropout_rate(self) -> float:
        """The dropout rate on attention probabilities (0 for a family without one)."""
        return getattr(self, self.ATTENTION_DROPOUT_FIELD) if self.ATTENTION_DROPOUT_FIELD else 0.0

    def sliding_window_fields(self) -> tuple[str, ...]:
        """The fields that give some layer sliding-window attention (empty: none does)."""
        return ()

    def attention_implementation(self, training_dropout: bool) -> str:
        """The implementation `attention` resolves to on the current backend, for a call
        that applies attention dropout (`training_dropout`) or not."""
        return resolve_attention(self.attention, training_dropout, jax.default_backend(),
                                 bool(self.sliding_window_fields()))

    def compute_dtype_line(self) -> str:
        """The compute dtype, and for "auto" why it was chosen, for the start-up line."""
        if self.dtype != "auto":
            return str(self.compute_dtype)
        return f"{self.compute_dtype} (model.dtype auto: {fast_compute_dtype()[1]})"

    def attention_line(self) -> str:
        """The attention implementation on the current backend, for the start-up line."""
        return describe_attention(self.attention, self.attention_dropout_rate, jax.default_backend(),
                                  bool(self.sliding_window_fields()))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        d = dataclasses.asdict(self)
        d["id2label"] = list(self.id2label)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        """Builds a config from `to_dict()` output; unknown keys are an InputError."""
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise InputError(f"unknown model config field(s): {', '.join(unknown)}")
        d = dict(d)
        if "id2label" in d:
            d["id2label"] = tuple(d["id2label"])
        return cls(**d)

    @classmethod
    def hf_fields(cls) -> tuple[str, ...]:
        """The fields read from and written to Hugging Face's config.json."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in cls.TRAINING_OPTIONS)

    @classmethod
    def hf_values(cls, hf: Mapping[str, Any], source: str) -> dict[str, Any]:
        """The field values a Hugging Face config.json dict gives (but id2label): those
        of `hf_fields()` it holds under their own names; InputError naming `source` for
        values the family cannot take. Families whose config.json spells a field
        otherwise translate here (and back in `hf_dict`)."""
        fields = set(cls.hf_fields()) - {"id2label"}
        return {k: hf[k] for k in fields if k in hf and hf[k] is not None}

    def hf_dict(self) -> dict[str, Any]:
        """The fields as config.json holds them (training options and id2label left out)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.TRAINING_OPTIONS and k != "id2label"}

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def field_type(cls: type[ModelConfig], name: str) -> type:
    """The type of config field `name`, `T` for an optional `T | None`."""
    annotation = {f.name: f.type for f in dataclasses.fields(cls)}[name]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


@dataclasses.dataclass(frozen=True)
class Weight:
    """One parameter: its flaxft path, its Hugging Face state-dict name (without the
    family's base-model prefix) and the functions converting the flaxft array to the
    Hugging Face tensor and back."""

    path: tuple[str, ...]
    hf_name: str
    to_hf: Callable[[Any], Any]
    from_hf: Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class HFFormat:
    """How a family's models look in Hugging Face folders.

    base_prefix: what transformers puts before encoder weights inside a model with a head
        ("bert."); a bare-encoder folder has none.
    weight_table(config, architecture): every parameter of `architecture` in the unrolled
        layout, in a fixed order; reading and writing both walk it.
    check_config(hf_dict, source): InputError for a config.json the family cannot read
        (naming `source`; default: refuses nothing).
    config_extras(config, architecture): config.json entries beyond the config's fields.
    read_aliases(tensors, config): a read state dict (base prefix already dropped) with
        tied copies and buffers resolved: only table names and other heads' weights left.
    head_prefixes: how head weights' names start (never base-prefixed); weights of a head
        the model lacks (or of an optional encoder part) are skipped when reading.
    write_extras(tensors, config): tensors transformers expects beside the table's
        (default: none).
    output_names(architecture): EncoderOutput field -> the field of transformers' output
        of that architecture holding the same values (what `convert verify` compares).
    """

    base_prefix: str
    weight_table: Callable[[ModelConfig, str], list[Weight]]
    config_extras: Callable[[ModelConfig, str], dict[str, Any]]
    read_aliases: Callable[[dict[str, Any], ModelConfig], dict[str, Any]]
    head_prefixes: tuple[str, ...]
    output_names: Callable[[str], dict[str, str]]
    check_config: Callable[[Mapping[str, Any], str], None] = lambda hf, source: None
    write_extras: Callable[[dict[str, Any], ModelConfig], dict[str, Any]] = lambda tensors, config: tensors


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family.

    name: what `model.family` names it by.
    model_types: the Hugging Face `model_type`s whose folders it reads (the first is written).
    config_class: its `ModelConfig` subclass.
    heads: module class per role in HEAD_ROLES it supports; the class names are the
        transformers architecture names.
    encoder_key: the top-level parameter subtree every head keeps the encoder under, so
        encoder weights move between heads unchanged.
    layers_path: where the layer stack sits: `layer_{i}` subtrees (unrolled) or one
        `layers` subtree with a leading layer axis (scan_layers).
    first_scanned_layer: under scan_layers, the layers before it stay `layer_{i}`
        subtrees (ModernBERT's layer 0 has no attention norm, so it is not stacked).
    optional_encoder_params: encoder subtrees a model may start afresh when a checkpoint
        lacks them (BERT's pooler, absent from masked-LM checkpoints).
    below_layers, above_layers: "/"-joined path prefixes of the parameters below the first
        layer (the embeddings) and right above the last (a pooler, a final norm, ModernBERT's
        prediction head): where they sit in the stack for layer-wise learning-rate decay
        (`depth`).
    tokenizer: the kind of tokenizer its checkpoints come with ("wordpiece", ...).
    logical_axes: the logical axis names its parameters carry (see `layers.LOGICAL_AXES`).
    hf: its Hugging Face format.
    train_flops(config, batch, seq_len, max_predictions, with_nsp): model FLOPs of one
        pretraining step (forward + backward), for MFU.
    pretraining_objective: what pretraining trains it to do: "masked_lm" (masked LM, plus
        next-sentence prediction when data.format is "bert" and it has a "pretraining"
        head) or "replaced_token_detection" (ELECTRA: its "pretraining" head is a generator
        and a discriminator).
    """

    name: str
    model_types: tuple[str, ...]
    config_class: type[ModelConfig]
    heads: Mapping[str, type[nn.Module]]
    encoder_key: str
    layers_path: tuple[str, ...]
    optional_encoder_params: tuple[str, ...]
    below_layers: tuple[str, ...]
    above_layers: tuple[str, ...]
    tokenizer: str
    logical_axes: tuple[str, ...]
    hf: HFFormat
    train_flops: Callable[..., float]
    pretraining_objective: str = "masked_lm"
    first_scanned_layer: int = 0

    def architecture(self, role: str) -> type[nn.Module]:
        """The module class for head `role`; InputError if the family has no such head."""
        if role not in self.heads:
            raise InputError(f"model family {self.name!r} has no {role} head (it has {sorted(self.heads)})")
        return self.heads[role]

    def check_tokenizer(self, kind: str, source: str) -> None:
        """InputError naming `source` when its tokenizer kind is not the family's."""
        if kind != self.tokenizer:
            raise InputError(f"{source} is a {kind} tokenizer, but model family {self.name!r} takes "
                             f"{self.tokenizer} tokenizers")

    def depth(self, path: str, num_layers: int) -> int | tuple[int, ...]:
        """Where the parameter at `path` ("/"-joined) sits in a model of `num_layers` layers,
        counted as ELECTRA's layer-wise learning-rate decay counts: 0 below the first layer
        (`below_layers`), l in layer l (1-based), num_layers + 1 right above the last
        (`above_layers`), num_layers + 2 elsewhere (the task heads). A scanned layer stack's
        parameters get one depth per layer along their leading axis (a tuple). Parameters
        of a model nested under a top-level key (ELECTRA pretraining's generator) count
        like the top model's at the same relative path."""
        keys = tuple(path.split("/"))
        n = len(self.layers_path)
        for rest in (keys, keys[1:]):
            if rest[:n] == self.layers_path and len(rest) > n:
                if rest[n] == "layers":
                    return tuple(range(self.first_scanned_layer + 1, num_layers + 1))
                return int(rest[n].removeprefix("layer_")) + 1
            joined = "/".join(rest)
            if any(joined.startswith(prefix + "/") for prefix in self.below_layers):
                return 0
            if any(joined.startswith(prefix + "/") for prefix in self.above_layers):
                return num_layers + 1
        return num_layers + 2

    @property
    def architectures(self) -> dict[str, type[nn.Module]]:
        """Module classes by architecture name (transformers' names, but for models that
        train several Hugging Face models at once)."""
        return {cls.__name__: cls for cls in self.heads.values()}

    @property
    def hf_architectures(self) -> dict[str, type[nn.Module]]:
        """The architectures a Hugging Face folder can hold: all but those split into
        several models on export (ELECTRA pretraining's, with `hf_models`)."""
        return {name: cls for name, cls in self.architectures.items() if not hasattr(cls, "hf_models")}
