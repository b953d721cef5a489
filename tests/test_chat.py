"""Multi-turn chat fine-tuning (data.messages_column): conversations laid out by the
tokenizer's chat template, trained on every assistant answer, decoded for their last one."""

import json
import shutil

import numpy as np
import pytest
from conftest import tiny_config
from flax import nnx
from test_convert_hf import _ids, byte_bpe, llama_folder  # noqa: F401 (a fixture)

import llmjax
from llmjax.data.chat import prompt_layout, record_messages
from llmjax.data.text_builder import DataError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# The templates of test_convert_hf.py, with transformers' {% generation %} blocks around what an
# assistant says, so that transformers' return_assistant_tokens_mask is an independent oracle.
LLAMA2_CHAT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
               "[INST] {{ m['content'] }} [/INST]{% elif m['role'] == 'system' %}<<SYS>>"
               "{{ m['content'] }}<</SYS>>{% else %}{% generation %} {{ m['content'] }}"
               "{{ eos_token }}{% endgeneration %}{% endif %}{% endfor %}")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}"
          "{% generation %}{{ m['content'] }}<|im_end|>\n{% endgeneration %}{% else %}"
          "{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Two dogs play"},
     {"role": "assistant", "content": "Zwei Hunde spielen"},
     {"role": "user", "content": "Ça coûte?"}, {"role": "assistant", "content": "3,50 €"}],
    [{"role": "user", "content": "The quick brown fox"},
     {"role": "assistant", "content": "jumps!"}],
    [{"role": "user", "content": "A man"}, {"role": "assistant", "content": "in an orange hat"},
     {"role": "user", "content": "and?"}, {"role": "assistant", "content": "starring."},
     {"role": "user", "content": "over"}, {"role": "assistant", "content": "the lazy dog."}],
]


def chat_folder(folder, template, specials):
    from llmjax.data.hf_tokenizer import load_hf_tokenizer

    folder.mkdir()
    byte_bpe(specials).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "chat_template": template}))
    return load_hf_tokenizer(folder), transformers.AutoTokenizer.from_pretrained(folder)


def chat_config(**overrides):
    return tiny_config(**{"objective": "seq2seq", "data.chat_template": True,
                          "data.messages_column": "messages", **overrides})


@pytest.mark.parametrize("name,template", [("llama2", LLAMA2_CHAT), ("chatml", CHATML)])
def test_conversations_tokenize_and_train_as_transformers_marks_them(tmp_path, name, template):
    """A conversation's ids are transformers' apply_chat_template ids; its trained tokens are
    those transformers marks as the assistant's; what precedes the last answer is the prompt
    apply_chat_template makes for it; a single exchange is laid out as a pair is."""
    ours, theirs = chat_folder(tmp_path / name, template,
                               ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"])
    layout = prompt_layout(chat_config(), ours)
    for messages, laid_out in zip(CONVERSATIONS, layout.conversations(CONVERSATIONS, ours),
                                  strict=True):
        expected = theirs.apply_chat_template(messages, tokenize=True, return_dict=True,
                                              return_assistant_tokens_mask=True)
        assert laid_out.ids.tolist() == list(expected["input_ids"])
        assert laid_out.trained.astype(int).tolist() == list(expected["assistant_masks"])
        with_prompt = _ids(theirs.apply_chat_template(messages[:-1], add_generation_prompt=True,
                                                      tokenize=True))
        assert laid_out.ids[: laid_out.last_answer_at].tolist() == with_prompt
        assert layout.chat_prompt(messages[:-1], ours).tolist() == with_prompt  # Run.chat's
    pair = CONVERSATIONS[1]
    single = layout.conversations([pair], ours)[0]
    prompt = layout.prompts([pair[0]["content"]], ours, 64)[0]
    completion = layout.completions([pair[1]["content"]], ours, 64)[0]
    assert single.ids.tolist() == prompt.tolist() + completion.tolist()
    assert single.trained.tolist() == [False] * len(prompt) + [True] * len(completion)


def test_llama_fine_tunes_on_conversations_from_jsonl(llama_folder, tmp_path):  # noqa: F811
    """`init.hf_path` + data.messages_column on a jsonl of {"messages": [...]}: the first
    step's loss is transformers' cross-entropy on the assistants' tokens (its assistant mask)
    over the conversations (cut to seq_len + target_seq_len positions: two of them are longer),
    and eval decodes each one's last answer after the prompt apply_chat_template makes for it
    (its last seq_len tokens)."""
    from llmjax.evaluation.decoding import DecodingEval
    from llmjax.train.loop import train_and_evaluate
    from llmjax.train.writer import read_metrics

    folder, hf_model = llama_folder
    folder = shutil.copytree(folder, tmp_path / "chat-model")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "chat_template": LLAMA2_CHAT}))
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"id": i, "messages": c}) + "\n"
                            for i, c in enumerate(CONVERSATIONS)))
    c = chat_config(**{"init.hf_path": str(folder), "data.source": f"jsonl:{data}",
                       "data.validation_fraction": 0.0, "data.eval_source": f"jsonl:{data}",
                       "data.eval_split": "train", "seq_len": 32, "target_seq_len": 32,
                       "batch_size": 3, "num_train_steps": 1, "log_every_steps": 1})
    train_and_evaluate(c, tmp_path / "sft")
    first = next(r for r in read_metrics(tmp_path / "sft") if "train/loss" in r)
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    losses, count = 0.0, 0
    for messages in CONVERSATIONS:
        laid_out = hf_tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                              return_assistant_tokens_mask=True)
        ids = torch.tensor([list(laid_out["input_ids"])[:65]])
        predicted = torch.tensor(list(laid_out["assistant_masks"])[1:65]).bool()
        with torch.no_grad():
            logits = hf_model(ids).logits[0, :-1]
        losses += torch.nn.functional.cross_entropy(logits[predicted], ids[0, 1:][predicted],
                                                    reduction="sum").item()
        count += int(predicted.sum())
    np.testing.assert_allclose(first["train/loss"], losses / count, rtol=1e-4)

    run = llmjax.load(tmp_path / "sft")
    decoding = DecodingEval(run.config, run.tokenizer, nnx.graphdef(run.model), f"jsonl:{data}",
                            "train")
    assert decoding.references == [m[-1]["content"] for m in CONVERSATIONS]
    assert decoding.sources == [m[-2]["content"] for m in CONVERSATIONS]
    for messages, row, valid in zip(CONVERSATIONS, decoding.inputs, decoding.segments,
                                    strict=True):
        assert row[valid == 1].tolist() == _ids(hf_tok.apply_chat_template(
            messages[:-1], add_generation_prompt=True, tokenize=True))[-32:]
    assert {"eval/bleu", "eval/exact_match"} <= set(read_metrics(tmp_path / "sft")[-1])


def test_conversation_records_are_read_from_json_and_tfds_sequences():
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert record_messages({"m": json.dumps(turns)}, "m", 0) == turns
    assert record_messages({"m": json.dumps(turns).encode()}, "m", 0) == turns
    tfds_columns = {"role": np.array([b"user", b"assistant"], object),
                    "content": np.array([b"hi", b"yo"], object)}
    assert record_messages({"m": tfds_columns}, "m", 0) == turns
    with pytest.raises(DataError, match="record 3: the conversation .* has no assistant"):
        record_messages({"m": turns[:1]}, "m", 3)
    with pytest.raises(DataError, match="record 0: column 'm' is not a list of messages"):
        record_messages({"m": "just text"}, "m", 0)
    with pytest.raises(DataError, match="no column 'messages'"):
        record_messages({"m": turns}, "messages", 0)


def test_a_template_that_rewrites_earlier_answers_is_a_clear_error(tmp_path):
    """Answers must appear in the render as given, or llmjax cannot tell what to train."""
    only_last = ("{% for m in messages %}{% if m['role'] == 'user' %}U: {{ m['content'] }}\n"
                 "{% elif loop.last %}A: {{ m['content'] }}\n{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}A:{% endif %}")
    ours, _ = chat_folder(tmp_path / "drops", only_last, ["<unk>", "<s>", "</s>"])
    layout = prompt_layout(chat_config(), ours)
    assert len(layout.conversations(CONVERSATIONS[1:2], ours)) == 1  # one exchange: fine
    with pytest.raises(DataError, match="does not render each assistant message"):
        layout.conversations(CONVERSATIONS[:1], ours)


def test_chat_replies_as_transformers_generates(llama_folder, tmp_path):  # noqa: F811
    """`Run.chat` / `llmjax generate --messages` on a Hugging Face folder: the reply is the
    greedy continuation transformers generates after apply_chat_template(add_generation_prompt)
    up to the template's end of turn; conversations batch as they run one at a time; a
    folder without a template is a clear error."""
    from test_cli import llmjax_cli

    from llmjax.configs import ConfigError

    folder, hf_model = llama_folder
    with pytest.raises(ConfigError, match="chat but the tokenizer has no chat template"):
        llmjax.load(folder).chat([{"role": "user", "content": "hi"}])
    folder = shutil.copytree(folder, tmp_path / "chat-model")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "chat_template": LLAMA2_CHAT}))
    run = llmjax.load(folder)
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    conversations = [[{"role": "user", "content": "Two dogs play"}],
                     [{"role": "user", "content": "Two"}, {"role": "assistant", "content": "Zwei"},
                      {"role": "user", "content": "dogs?"}]]
    replies = []
    for messages in conversations:
        ids = _ids(hf_tok.apply_chat_template(messages, add_generation_prompt=True,
                                              tokenize=True))
        assert len(ids) + 8 <= 64  # within the model's positions: nothing cut
        with torch.no_grad():
            new = hf_model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                    eos_token_id=2, pad_token_id=0)[0, len(ids):].tolist()
        expected = hf_tok.decode(new[: new.index(2)] if 2 in new else new)
        replies.append(run.chat(messages, max_new_tokens=8, temperature=0.0))
        assert replies[-1] == expected.removeprefix(" ")  # Llama 2's lead space
    assert all(replies)  # something was generated
    assert run.chat(conversations, max_new_tokens=8, temperature=0.0) == replies
    out = llmjax_cli("generate", f"--workdir={folder}", "--max_new_tokens=8",
                     "--temperature=0", "--messages=" + json.dumps(conversations[1]))
    assert out.stdout == replies[1] + "\n"


def test_generate_messages_flag_reads_inline_json_or_a_file(tmp_path):
    import types

    from llmjax import commands
    from llmjax.configs import ConfigError

    turns = [{"role": "user", "content": "hi"}]
    assert commands._conversation(json.dumps(turns)) == turns
    (tmp_path / "conv.json").write_text(json.dumps(turns))
    assert commands._conversation(str(tmp_path / "conv.json")) == turns
    with pytest.raises(ConfigError, match="neither a JSON list nor a file"):
        commands._conversation(str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match=r"--messages: give a JSON list of \{"):
        commands._conversation('["hi"]')
    with pytest.raises(ConfigError, match="--messages: not JSON"):
        commands._conversation("[{")
    for prompt, messages in ((None, None), ("hi", json.dumps(turns))):
        with pytest.raises(ConfigError, match="generate needs --prompt=TEXT, or --messages"):
            commands.generate(types.SimpleNamespace(prompt=prompt, messages=messages))
