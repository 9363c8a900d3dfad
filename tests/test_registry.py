"""The model-family registry and the config keys that choose a family."""

import dataclasses

import pytest

from flaxft import config as config_lib
from flaxft.errors import InputError
from flaxft.models import (
    ARCHITECTURES,
    FAMILIES,
    HEAD_ROLES,
    BertConfig,
    family_for_model_type,
    family_named,
    family_of,
)
from tests.tiny import set_dotted


def test_every_family_declares_every_head_under_transformers_names():
    for name, declared in FAMILIES.items():
        assert declared.name == name
        assert set(declared.heads) <= set(HEAD_ROLES) and "encoder" in declared.heads
        for role, cls in declared.heads.items():
            assert ARCHITECTURES[cls.__name__] is cls
            assert family_of(cls.__name__) is declared
        fields = {f.name for f in dataclasses.fields(declared.config_class)}
        assert {"vocab_size", "hidden_size", "num_hidden_layers", "max_position_embeddings",
                "initializer_range"} <= fields, name


def test_lookups_and_their_errors():
    bert = family_named("bert")
    assert family_for_model_type("bert", "x/config.json") is bert
    assert bert.architecture("sequence_classification").__name__ == "BertForSequenceClassification"
    with pytest.raises(InputError, match=r"config.model.family 'gpt' is not one of \['bert', 'electra', 'modernbert', 'roberta', 'xlm_roberta'\]"):
        family_named("gpt")
    with pytest.raises(InputError, match=r"x/config.json: model_type 'llama' is not supported .*\['bert', 'electra', 'modernbert', 'roberta', 'xlm-roberta'\]"):
        family_for_model_type("llama", "x/config.json")
    with pytest.raises(InputError, match="unknown architecture 'LlamaForCausalLM'"):
        family_of("LlamaForCausalLM")


def test_config_model_group_is_the_family_config():
    config = config_lib.default_config()
    assert config.model.family == "bert"
    assert set(config.model.keys()) - {"family"} == ({f.name for f in dataclasses.fields(BertConfig)} - {"id2label"}
                                                     - set(BertConfig.LORA_FIELDS))  # LoRA: the peft group
    assert config_lib.model_config(config) == BertConfig()
    config_lib.validate(set_dotted(config, {"num_train_steps": 10}))
    with pytest.raises(InputError, match="config.model.family 'electron' is not one of"):
        config_lib.validate(set_dotted(config_lib.default_config(), {"num_train_steps": 10, "model.family": "electron"}))
    switched = set_dotted(config_lib.default_config(), {"num_train_steps": 10, "model.family": "roberta"})
    with pytest.raises(InputError, match=r"config.model holds another family's fields than config.model.family "
                                         r"'roberta' \(it lacks bos_token_id, eos_token_id\); a config file for it "
                                         r"starts with config.model = model_defaults\('roberta'\)"):
        config_lib.validate(switched)
    typo = config_lib.default_config()
    typo.model.hidden_sise = 3
    with pytest.raises(InputError, match="unknown config key config.model.hidden_sise"):
        config_lib.validate(typo)
    with pytest.raises(TypeError):  # optional fields are typed: the command line refuses a string
        set_dotted(config_lib.default_config(), {"model.classifier_dropout": "high"})
