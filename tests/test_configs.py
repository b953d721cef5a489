"""Every config file in configs/ loads (with each of its documented variants) and validates as
`llmjax train` would; the ones that start from a Hugging Face folder with `init.hf_path` set."""

import importlib.util
import pathlib

import pytest

from llmjax import validation

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"
VARIANTS = [("demo.py", None), ("gpt.py", "size=tiny"), ("gpt.py", "size=base,style=llama"),
            ("gpt.py", "size=small,style=gemma2"),
            ("gpt.py", "size=tiny,style=deepseek,experts=4"), ("bert.py", "size=tiny"),
            ("bert_classify.py", None), ("gpt_classify.py", None),
            ("gpt_classify.py", "size=small,style=llama"), ("t5.py", "size=tiny"),
            ("translate.py", "size=tiny"),
            ("instruct.py", "stage=sft"), ("instruct.py", "stage=dpo")]


def load(name: str, arg: str | None):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), CONFIGS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_every_config_file_is_covered():
    assert {p.name for p in CONFIGS.glob("*.py")} == {name for name, _ in VARIANTS}


@pytest.mark.parametrize("name,arg", VARIANTS)
def test_config_files_validate(name, arg):
    c = load(name, arg)
    if name == "instruct.py":  # the architecture comes from the folder
        c.init.hf_path = "path/to/model"
    validation.validate(c)


def test_instruct_stages_lay_out_chats_and_preferences():
    sft, dpo = load("instruct.py", "stage=sft"), load("instruct.py", "stage=dpo")
    assert (sft.objective, sft.data.messages_column, sft.data.chat_template) == (
        "seq2seq", "messages", True)
    assert (dpo.objective, dpo.data.chat_template, dpo.dpo.beta) == ("dpo", True, 0.1)
    assert dpo.optimizer.learning_rate < sft.optimizer.learning_rate
    with pytest.raises(ValueError, match="stage='rlhf': use sft or dpo"):
        load("instruct.py", "stage=rlhf")
