"""The shared default config and its validation.

Every config file under `configs/` is a short, commented diff against `default_config()`.
`validate` runs before anything is compiled or written: unknown keys, wrong types and
impossible combinations are InputErrors naming the field.
"""

import dataclasses
import re

import ml_collections

from flaxft import compilation_cache, sharding
from flaxft.errors import InputError
from flaxft.models import ModelConfig, family_named
from flaxft.models.family import field_type


def default_config() -> ml_collections.ConfigDict:
    """Every key flaxft reads, with its default. Pretraining on the offline corpus."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_train_steps = 0  # the run's length in steps; fine-tuning may give task.epochs instead (not both)
    c.global_batch_size = 32
    c.grad_accum_steps = 1  # microbatches per step; each holds global_batch_size / grad_accum_steps rows
    c.seq_len = 128

    c.optimizer = "adamw"  # or "stable_adamw" (AdamW, each tensor's learning rate divided by
    # max(1, sqrt(mean(g^2 / v))): Wortsman et al. 2023, as ModernBERT trains), or "lamb"
    c.learning_rate = 1e-4
    c.warmup_steps = 100
    c.warmup_ratio = 0.0  # instead of warmup_steps (which must then be 0): this share of the run's steps,
    # int(warmup_ratio * num_train_steps) as transformers rounds it
    c.lr_schedule = "linear"  # after warmup: "linear" or "cosine" decay to end_learning_rate; "wsd" (warmup-
    # stable-decay) holds learning_rate, then decays to end_learning_rate over the last decay_steps (1 - sqrt)
    c.decay_steps = 0  # "wsd" only: the final steps that decay (Hägele et al. 2024); 0 with other schedules
    c.end_learning_rate = 0.0
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-6
    c.weight_decay = 0.01  # not applied to biases and LayerNorm parameters
    c.decoupled_weight_decay = False  # adamw, stable_adamw: decay p by weight_decay * lr_t / learning_rate
    # (the schedule's shape, not its size: Composer's DecoupledAdamW) instead of by lr_t * weight_decay,
    # so weight_decay is far smaller (ModernBERT: 1e-5)
    c.grad_clip_norm = 1.0  # global-norm clipping; 0 turns it off
    c.layerwise_lr_decay = 1.0  # in (0, 1]; 1 = off. ELECTRA's layer-wise decay: each parameter's rate is
    # learning_rate * decay^(L + 2 - depth): depth 0 embeddings, l layer l of L, L + 1 pooler/final norm, L + 2 heads
    c.freeze = ""  # a regex: parameters whose "/"-joined path it matches (re.search) are held fixed, with no
    # gradient and no optimizer state, e.g. "embeddings/" or "encoder/layer_[0-5]/"; "" trains everything

    c.log_every_steps = 10
    c.eval_every_steps = 200
    c.eval_batches = 8
    c.checkpoint_every_steps = 500
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.keep = 3  # newest checkpoints kept
    c.checkpoint.keep_every_steps = 0  # also keep every multiple of this step for good (0: none)
    c.checkpoint.fallback = False  # resume from the step before an unreadable newest one
    c.on_nonfinite = "abort"  # NaN/Inf loss or gradients: "abort" (exit 1) or "skip" (drop the update)
    c.init_from = ""  # a Hugging Face folder or a flaxft checkpoint/workdir; "" = random init
    c.compilation_cache_dir = "auto"  # compiled steps kept for the next run of the same shapes:
    # "auto" = $JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/flaxft/jax or ~/.cache/flaxft/jax;
    # a folder; "" = none (flaxft/compilation_cache.py)

    c.model = model_defaults("bert")  # the family (its Hugging Face config fields) to train from scratch

    c.data = ml_collections.ConfigDict()
    c.data.path = "stdlib-docstrings"  # the offline default corpus; or files, globs, folders, HF datasets
    c.data.text_column = "text"  # column holding the text in JSONL / Parquet / CSV / HF datasets
    c.data.tokenizer = ""  # an HF tokenizer folder; "" = train WordPiece on the corpus into WORKDIR/tokenizer
    c.data.format = "bert"  # "bert": sentence pairs + NSP; "roberta": full sentences packed, no NSP
    c.data.mask_rate = 0.15
    c.data.whole_word_masking = False
    c.data.max_predictions_per_seq = 20
    c.data.short_seq_prob = 0.1
    c.data.eval_fraction = 0.02  # share of documents held out for evaluation
    c.data.cache_dir = ""  # "" = WORKDIR/cache: each corpus chunk's tokens and rows (reused across runs and hosts)
    c.data.streams = 0  # S data streams, each its own share of the shards; 0 = one per process
    c.data.chunk_mb = 16.0  # MB of text prepared (read, tokenized, laid out in rows) at a time
    c.data.mix_chunks = 4  # chunks whose rows are shuffled together
    c.data.workers = -1  # processes preparing chunks while training runs; -1 = one per core, 0 = none
    c.data.tokenizer_sample_mb = 32.0  # text a tokenizer is trained on when config.data.tokenizer is empty

    c.pretraining = ml_collections.ConfigDict()
    c.pretraining.discriminator_weight = 50.0  # ELECTRA: lambda, the replaced-token loss's weight next to the MLM loss

    c.task = ml_collections.ConfigDict()
    c.task.name = "pretraining"  # or a fine-tuning task: "classification", "ner", "qa"
    c.task.train_file = ""  # CSV / TSV / JSON / JSONL / Parquet, or a save_to_disk folder
    c.task.validation_file = ""
    c.task.dataset = ""  # a Hugging Face dataset "name" or "name:config", e.g. "glue:sst2"
    c.task.epochs = 0.0  # fine-tuning: passes over the training rows, instead of num_train_steps
    c.task.text_fields = ""  # classification: one or two columns, comma separated ("" = dataset default)
    c.task.label_field = "label"
    c.task.pack = "batches"  # classification, NER: several short examples per row. "batches": the
    # global_batch_size examples of each step packed into as few rows as they fit (the same
    # examples per step and the same loss as unpadded rows, without computing the padding), and
    # validation rows; "eval": validation rows only (same metrics, fewer rows); "all": training
    # rows too, before batching (fuller rows, so more examples per step and fewer steps per
    # epoch: a different recipe); "none"
    c.task.max_segments = 16  # examples per packed row, at most
    c.task.tokens_field = "tokens"  # NER: pre-split words and their BIO tags
    c.task.tags_field = "ner_tags"
    c.task.question_field = "question"  # QA, SQuAD layout
    c.task.context_field = "context"
    c.task.answers_field = "answers"
    c.task.doc_stride = 128  # QA: tokens shared by consecutive windows of a long context
    c.task.max_query_length = 64
    c.task.max_answer_length = 30
    c.task.n_best_size = 20

    c.peft = ml_collections.ConfigDict()  # parameter-efficient fine-tuning (fine-tuning only)
    c.peft.method = "none"  # or "lora": low-rank adapters on the kernels lora_targets matches (Hu et al. 2021)
    c.peft.lora_rank = 8  # R of each adapter's factors A (K x R) and B (R x F)
    c.peft.lora_alpha = 16.0  # adapters add (lora_alpha / lora_rank) x A B
    c.peft.lora_dropout = 0.1  # dropout on an adapter's input, in training (PEFT's GLUE example: 8, 16, 0.1)
    c.peft.lora_targets = LORA_TARGETS  # regex searched in kernel paths ("bert/encoder/layer_0/attention/query/
    # kernel"; under model.scan_layers the stack's: ".../encoder/layers/attention/query/kernel")

    c.mesh = sharding.default_mesh_config()  # data / fsdp / tensor sizes and logical-axis rules
    return c


# The attention's query, key and value projections of every family: BERT, RoBERTa, XLM-R and
# ELECTRA's attention/{query,key,value}, ModernBERT's fused attn/Wqkv.
LORA_TARGETS = r"(attention/(query|key|value)|attn/Wqkv)/kernel$"


def model_defaults(family_name: str) -> ml_collections.ConfigDict:
    """The config.model group for a family: `family` and every field of its config class
    but id2label, at the class's defaults (BERT-Base's for "bert")."""
    config_class = family_named(family_name).config_class
    group = ml_collections.ConfigDict({"family": family_name})
    for f in dataclasses.fields(config_class):
        if f.name == "id2label" or f.name in config_class.LORA_FIELDS:  # LoRA: the peft group's
            continue
        default = f.default
        if default is None:  # an optional field: typed, so overrides are checked
            default = ml_collections.FieldReference(None, field_type=field_type(config_class, f.name))
        group[f.name] = default
    return group


def model_group(family_name: str, model: ModelConfig) -> ml_collections.ConfigDict:
    """The config.model group describing `model` (of family `family_name`): `model_defaults`
    with the model's values."""
    group = model_defaults(family_name)
    group.update({k: v for k, v in model.to_dict().items() if k != "id2label" and k not in model.LORA_FIELDS})
    return group


def lora_fields(config: ml_collections.ConfigDict) -> dict:
    """The model config's LoRA fields (`ModelConfig.LORA_FIELDS`) that config.peft asks
    for: its values with method "lora", no LoRA (lora_rank 0, the rest at their
    defaults) with "none"."""
    if config.peft.method != "lora":
        return {name: getattr(ModelConfig, name) for name in ModelConfig.LORA_FIELDS}
    peft = config.peft
    return dict(lora_rank=peft.lora_rank, lora_alpha=float(peft.lora_alpha), lora_dropout=float(peft.lora_dropout),
                lora_targets=peft.lora_targets)


_CHOICES = {
    "optimizer": ("adamw", "stable_adamw", "lamb"),
    "lr_schedule": ("linear", "cosine", "wsd"),
    "data.format": ("bert", "roberta"),
    "on_nonfinite": ("abort", "skip"),
    "task.name": ("pretraining", "classification", "ner", "qa"),  # flaxft.tasks.FINETUNE_TASKS
    "task.pack": ("none", "eval", "batches", "all"),
}
_POSITIVE = (
    "global_batch_size", "grad_accum_steps", "seq_len", "log_every_steps",
    "eval_every_steps", "eval_batches", "checkpoint_every_steps", "data.max_predictions_per_seq",
    "checkpoint.keep", "task.max_segments",
)


def _get(config: ml_collections.ConfigDict, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def model_config(config: ml_collections.ConfigDict, **changes) -> ModelConfig:
    """The model config the run's `model.*` keys describe (of `model.family`'s class)."""
    fields = {k: v for k, v in config.model.to_dict().items() if k != "family"}
    return family_named(config.model.family).config_class.from_dict({**fields, **changes})


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises InputError naming the first field whose value cannot work."""
    defaults = default_config()
    if isinstance(config.get("model"), ml_collections.ConfigDict) and "family" in config.model:
        defaults.model = model_defaults(config.model.family)  # the family's own fields
        missing = sorted(set(defaults.model.keys()) - set(config.model.keys()))
        if missing:  # the family was switched on the command line, not in the file
            raise InputError(
                f"config.model holds another family's fields than config.model.family {config.model.family!r} "
                f"(it lacks {', '.join(missing[:3])}); a config file for it starts with "
                f"config.model = model_defaults({config.model.family!r})"
            )
    _check_keys_and_types(config, defaults, "")
    for field, choices in _CHOICES.items():
        if _get(config, field) not in choices:
            raise InputError(f"config.{field} is {_get(config, field)!r}; expected one of {choices}")
    for field in _POSITIVE:
        if _get(config, field) < 1:
            raise InputError(f"config.{field} must be positive, got {_get(config, field)}")
    _check_length(config)
    _check_schedule(config)
    if config.decoupled_weight_decay and config.optimizer == "lamb":
        raise InputError("config.decoupled_weight_decay is for config.optimizer 'adamw' or 'stable_adamw', not 'lamb'")
    if not 0 < config.layerwise_lr_decay <= 1:
        raise InputError(f"config.layerwise_lr_decay must be in (0, 1] (1 = off), got {config.layerwise_lr_decay}")
    cache = compilation_cache.cache_dir(config.compilation_cache_dir)
    if cache is not None and cache.exists() and not cache.is_dir():
        raise InputError(f"config.compilation_cache_dir {str(cache)!r} is a file, not a folder")
    if not 0 < config.data.mask_rate < 1:
        raise InputError(f"config.data.mask_rate must be in (0, 1), got {config.data.mask_rate}")
    if not 0 < config.data.eval_fraction < 1:
        raise InputError(f"config.data.eval_fraction must be in (0, 1), got {config.data.eval_fraction}")
    if config.pretraining.discriminator_weight < 0:
        raise InputError(f"config.pretraining.discriminator_weight cannot be negative, got "
                         f"{config.pretraining.discriminator_weight}")
    _check_peft(config)
    sharding.logical_rules(config.mesh)
    model = model_config(config)
    if config.seq_len > model.max_seq_len:
        raise InputError(
            f"config.seq_len ({config.seq_len}) is above what config.model.max_position_embeddings "
            f"({model.max_position_embeddings}) allows ({model.max_seq_len})"
        )
    if config.global_batch_size % config.grad_accum_steps:
        raise InputError(
            f"config.global_batch_size ({config.global_batch_size}) does not divide into "
            f"config.grad_accum_steps ({config.grad_accum_steps}) microbatches"
        )
    if config.data.streams < 0:
        raise InputError(f"config.data.streams must be >= 0 (0 = one per process), got {config.data.streams}")
    if config.data.workers < -1:
        raise InputError(f"config.data.workers must be >= -1 (-1 = one per core), got {config.data.workers}")
    for field in ("data.chunk_mb", "data.mix_chunks", "data.tokenizer_sample_mb"):
        if _get(config, field) <= 0:
            raise InputError(f"config.{field} must be positive, got {_get(config, field)}")
    if config.data.max_predictions_per_seq > config.seq_len:
        raise InputError("config.data.max_predictions_per_seq is larger than config.seq_len")


def _check_length(config: ml_collections.ConfigDict) -> None:
    """Pretraining runs num_train_steps; fine-tuning num_train_steps or task.epochs, not both."""
    steps, epochs = config.num_train_steps, config.task.epochs
    if steps < 0 or epochs < 0:
        raise InputError(f"config.num_train_steps ({steps}) and config.task.epochs ({epochs}) cannot be negative")
    if config.task.name == "pretraining":
        if not steps:
            raise InputError("config.num_train_steps must be set for pretraining")
        if epochs:
            raise InputError("config.task.epochs is for fine-tuning; pretraining runs config.num_train_steps")
    elif steps and epochs:
        raise InputError(f"config.num_train_steps ({steps}) and config.task.epochs ({epochs}) are both set; "
                         "set one: a number of steps, or of passes over the training rows")
    elif not steps and not epochs:
        raise InputError("fine-tuning needs config.num_train_steps or config.task.epochs")


def resolve_warmup(config: ml_collections.ConfigDict) -> None:
    """Sets warmup_steps from warmup_ratio when that is set; call once num_train_steps is known."""
    if config.warmup_ratio:
        config.warmup_steps = int(config.warmup_ratio * config.num_train_steps)


def _check_schedule(config: ml_collections.ConfigDict) -> None:
    """decay_steps belongs to "wsd", which needs it; warmup and decay fit into the run (fine-tuning
    that gives task.epochs learns its length later: optim.learning_rate_schedule checks then);
    warmup_ratio in [0, 1), and not with warmup_steps."""
    if not 0 <= config.warmup_ratio < 1:
        raise InputError(f"config.warmup_ratio must be in [0, 1), got {config.warmup_ratio}")
    if config.warmup_ratio and config.warmup_steps:
        raise InputError(f"config.warmup_steps ({config.warmup_steps}) and config.warmup_ratio "
                         f"({config.warmup_ratio}) are both set; set one (the other to 0)")
    warmup, decay, steps = config.warmup_steps, config.decay_steps, config.num_train_steps
    if config.warmup_ratio:
        warmup = int(config.warmup_ratio * steps)
    if config.lr_schedule != "wsd":
        if decay:
            raise InputError(f"config.decay_steps ({decay}) is for config.lr_schedule 'wsd'; "
                             f"{config.lr_schedule!r} decays over every step after warmup: set decay_steps = 0")
        return
    if decay < 1:
        raise InputError(f"config.decay_steps must be positive with config.lr_schedule 'wsd' "
                         f"(the final steps that decay to end_learning_rate), got {decay}")
    if steps and warmup + decay > steps:
        raise InputError(f"config.warmup_steps ({warmup}) + config.decay_steps ({decay}) exceed "
                         f"config.num_train_steps ({steps}) with config.lr_schedule 'wsd'")


def _check_peft(config: ml_collections.ConfigDict) -> None:
    """peft.method is "none" or "lora" (fine-tuning only); LoRA's rank, alpha, dropout and
    target regex can work. (Whether the regex matches a kernel of the model is checked when the
    model is known: `flaxft.finetune.setup`.)"""
    peft = config.peft
    if peft.method not in ("none", "lora"):
        raise InputError(f"config.peft.method is {peft.method!r}; expected one of ('none', 'lora')")
    if peft.method == "none":
        return
    if config.task.name == "pretraining":
        raise InputError("config.peft.method 'lora' is for fine-tuning; pretraining (config.task.name) trains "
                         "every parameter: set config.peft.method = 'none'")
    for field in ("lora_rank", "lora_alpha"):
        if peft[field] <= 0:
            raise InputError(f"config.peft.{field} must be positive, got {peft[field]}")
    if not 0.0 <= peft.lora_dropout < 1.0:
        raise InputError(f"config.peft.lora_dropout must be in [0, 1), got {peft.lora_dropout}")
    try:
        re.compile(peft.lora_targets)
    except re.error as e:
        raise InputError(f"config.peft.lora_targets {peft.lora_targets!r} is not a regular expression ({e})") from None


def _check_keys_and_types(config, defaults, prefix: str) -> None:
    unknown = sorted(set(config.keys()) - set(defaults.keys()))
    if unknown:
        raise InputError(f"unknown config key config.{prefix}{unknown[0]}")
    for key in defaults.keys():
        name = f"{prefix}{key}"
        if key not in config:
            raise InputError(f"config.{name} is missing")
        value, default = config[key], defaults[key]
        if isinstance(default, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise InputError(f"config.{name} must be a group of keys, got {value!r}")
            _check_keys_and_types(value, default, name + ".")
        elif default is not None and value is not None and not _same_type(value, default):
            raise InputError(f"config.{name} must be {type(default).__name__}, got {value!r}")


def _same_type(value, default) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))
