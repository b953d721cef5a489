"""How a decoder trained on source -> target pairs (objective=seq2seq) sees a pair: the prompt
before the answer, the tokens that end the answer, and the token that stops decoding.

Plain (the default): `<bos> source <eos>` then `target <eos>`. With `data.chat_template`, the
tokenizer's Hugging Face chat template (tokenizer_config.json's `chat_template`, or a
`chat_template.jinja` beside it) lays the source out as a user turn followed by the generation
prompt, and the target as the assistant's answer with the template's end of turn after it
(ChatML's `<|im_end|>`, Llama 3's `<|eot_id|>`, ...), whose first token stops decoding. The
template is rendered once, around marker texts, to find those pieces; a prompt or answer is then
tokenized whole, as `apply_chat_template` does (pieces joined only when a source is cut).

Conversations (`data.messages_column`: lists of {"role", "content"} messages) are rendered
whole by the template, each assistant's content replaced by a marker text; the text around the
markers is the context, and each answer (the template's lead before it when there, its content,
the end of turn after it) is trained. Pieces are tokenized apart, split where the answers
begin and end, so the ids are `apply_chat_template`'s wherever the template's markup splits
tokens there (special tokens, or a space before the answer in byte-level BPE).

Templates render as transformers renders them (jinja2's sandbox, `raise_exception`, `tojson`,
`{% break %}`, and `{% generation %}` blocks, rendered as plain text), except that no clock is
offered (`strftime_now`): a template that writes today's date falls back to its fixed one, so a
run's data does not depend on the day it ran.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence

import ml_collections
import numpy as np

from llmjax.configs import ConfigError
from llmjax.data.sources import DataError, column_list
from llmjax.data.tokenizers import Tokenizer

_SOURCE, _ANSWER = "LLMJAX_SOURCE_9f1c", "LLMJAX_ANSWER_9f1c"  # marker texts in a render


def _answer_marker(k: int) -> str:
    return f"{_ANSWER}_{k}_"  # the closing _ keeps marker 1 from being a prefix of marker 10


@dataclasses.dataclass(frozen=True)
class Conversation:
    """One conversation as its template lays it out."""

    ids: np.ndarray  # [n] int32
    trained: np.ndarray  # [n] bool: the assistants' answers (lead, content, end of turn)
    last_answer_at: int  # where the last answer's ids begin: what precedes it is its prompt


@dataclasses.dataclass(frozen=True)
class PromptLayout:
    """Texts around a source (`prefix`, `suffix`), before and after an answer (`lead`, `end`:
    trained with it), or None for the plain layout's special ids."""

    prefix: str | None = None
    suffix: str | None = None
    lead: str = ""
    end: str | None = None
    # what renders whole conversations: the template and its special tokens' texts
    template: str | None = None
    specials: tuple[tuple[str, str | None], ...] = ()

    @property
    def is_plain(self) -> bool:
        return self.prefix is None

    def prompts(self, sources: Sequence[str], tokenizer: Tokenizer, source_len: int
                ) -> list[np.ndarray]:
        """Each source's prompt ids, at most `source_len` (the source cut to fit)."""
        if self.is_plain:
            return [np.concatenate([[tokenizer.bos_id], s[: source_len - 2],
                                    [tokenizer.eos_id]]).astype(np.int32)
                    for s in tokenizer.encode_batch(list(sources))]
        whole = tokenizer.encode_batch([self.prefix + s + self.suffix for s in sources])
        return [w if len(w) <= source_len else self._joined(s, tokenizer, source_len)
                for w, s in zip(whole, sources, strict=True)]

    def _joined(self, source: str, tokenizer: Tokenizer, source_len: int) -> np.ndarray:
        prefix, suffix = self._piece_ids(tokenizer)
        keep = max(source_len - len(prefix) - len(suffix), 0)
        return np.concatenate([prefix, tokenizer.encode_array(source)[:keep], suffix]
                              ).astype(np.int32)

    def _piece_ids(self, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
        return tokenizer.encode_array(self.prefix), tokenizer.encode_array(self.suffix)

    def completions(self, targets: Sequence[str], tokenizer: Tokenizer, target_len: int
                    ) -> list[np.ndarray]:
        """Each target's answer ids with the end of turn (<eos> when plain), at most
        `target_len` (the target cut, the end kept)."""
        end = self.end_ids(tokenizer)
        if self.is_plain:
            return [np.concatenate([t[: target_len - len(end)], end]).astype(np.int32)
                    for t in tokenizer.encode_batch(list(targets))]
        if not self.end:  # a template that ends an answer with nothing: <eos> does
            return [np.concatenate([tokenizer.encode_array(self.lead + t)[: target_len - 1],
                                    end]).astype(np.int32) for t in targets]
        whole = tokenizer.encode_batch([self.lead + t + self.end for t in targets])
        return [w if len(w) <= target_len else np.concatenate(
                    [tokenizer.encode_array(self.lead + t)[: target_len - len(end)], end]
                ).astype(np.int32) for w, t in zip(whole, targets, strict=True)]

    def end_ids(self, tokenizer: Tokenizer) -> np.ndarray:
        """What closes an answer: <eos> when plain, or when a template closes it with nothing."""
        end = None if self.is_plain else tokenizer.encode_array(self.end)
        return end if end is not None and len(end) else np.asarray([tokenizer.eos_id], np.int32)

    def answer(self, decoded: str) -> str:
        """A decoded answer's text without the lead the template puts before every answer."""
        return decoded.removeprefix(self.lead)

    def stop_id(self, tokenizer: Tokenizer) -> int:
        """The token that ends an answer in decoding: the end of turn's first."""
        return int(self.end_ids(tokenizer)[0])

    def chat_prompt(self, messages: list[dict], tokenizer: Tokenizer) -> np.ndarray:
        """A conversation's ids followed by the generation prompt, the whole render tokenized
        at once (as `apply_chat_template(add_generation_prompt=True)`): what a reply follows."""
        return tokenizer.encode_array(_render(self.template, messages, True, self.specials))

    def conversations(self, conversations: Sequence[list[dict]], tokenizer: Tokenizer
                      ) -> list[Conversation]:
        """Each conversation's ids, with its answers marked (module docstring). An answer the
        template closes with nothing is closed by <eos>, as `completions` does."""
        pieces: list[tuple[str, bool]] = []  # (text, trained), all conversations in a row
        bounds = []
        for messages in conversations:
            start = len(pieces)
            pieces += self._pieces(messages)
            bounds.append((start, len(pieces)))
        encoded = tokenizer.encode_batch([text for text, _ in pieces])
        closing = [] if self.end else [tokenizer.eos_id]
        out = []
        for start, stop in bounds:
            ids: list[np.ndarray] = []
            trained: list[np.ndarray] = []
            last = 0
            for (_, is_answer), piece in zip(pieces[start:stop], encoded[start:stop],
                                             strict=True):
                if is_answer:
                    last = sum(map(len, ids))
                    piece = np.concatenate([piece, closing]).astype(np.int32)
                ids.append(piece)
                trained.append(np.full(len(piece), is_answer))
            out.append(Conversation(np.concatenate(ids).astype(np.int32),
                                    np.concatenate(trained), last))
        return out

    def _pieces(self, messages: list[dict]) -> list[tuple[str, bool]]:
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        marked, k = [], 0
        for m in messages:
            if m["role"] == "assistant":
                m, k = {**m, "content": _answer_marker(k)}, k + 1
            marked.append(m)
        text = _render(self.template, marked, False, self.specials)
        pieces, at = [], 0
        for k, content in enumerate(answers):
            marker = _answer_marker(k)
            where = text.find(marker, at)
            if where < 0 or text.count(marker) != 1:
                raise DataError("the chat template does not render each assistant message's "
                                "content once, in order (it drops or rewrites earlier "
                                "answers): llmjax cannot tell the answers to train on")
            start = where - len(self.lead) if self.lead and text[at:where].endswith(
                self.lead) else where
            stop = where + len(marker)
            closed = bool(self.end) and text.startswith(self.end, stop)
            pieces += [(text[at:start], False),
                       (text[start:where] + content + (self.end if closed else ""), True)]
            at = stop + (len(self.end) if closed else 0)
        return pieces + [(text[at:], False)]


def prompt_layout(config: ml_collections.ConfigDict, tokenizer: Tokenizer) -> PromptLayout:
    """The layout `config` asks for (`data.chat_template`)."""
    if not config.data.chat_template:
        return PromptLayout()
    return chat_layout(tokenizer, "data.chat_template=True", "fine-tune from a chat model's "
                       "folder, or unset data.chat_template")


def chat_layout(tokenizer: Tokenizer, wanted_by: str = "a chat", fix: str = "use a chat "
                "model's folder") -> PromptLayout:
    """The layout of the tokenizer's chat template; an error naming `wanted_by` and `fix` if
    it has none."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ConfigError(f"{wanted_by} but the tokenizer has no chat template "
                          "(tokenizer_config.json's chat_template, or chat_template.jinja, in "
                          f"its Hugging Face folder): {fix}")
    specials = {f"{role}_token": tokenizer.token_text(getattr(tokenizer, f"{role}_id"))
                for role in ("bos", "eos", "pad", "unk")}
    return _layout_of(template, tuple(sorted(specials.items())))


def field_messages(record: dict, column: str) -> list[dict] | None:
    """The conversation a record's field holds — a list of {"role", "content"} (a JSON list as
    text in a jsonl: file, or a TFDS sequence of role and content), texts decoded — or None
    when it holds something else."""
    value = record.get(column)
    if isinstance(value, dict) and set(value) >= {"role", "content"}:  # TFDS: columns of turns
        value = [dict(zip(value, turn, strict=True)) for turn in zip(*value.values(),
                                                                       strict=True)]
    else:
        value = column_list(record, column)
    if not value or not all(isinstance(m, dict) and {"role", "content"} <= set(m)
                            for m in value):
        return None
    return [{k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in m.items()}
            for m in value]


def record_messages(record: dict, column: str, index: int) -> list[dict]:
    """A record's conversation (field_messages), with at least one assistant message."""
    messages = field_messages(record, column)
    if messages is None:
        raise DataError(f"record {index}: column {column!r} is not a list of messages "
                        '{"role": ..., "content": ...} (a JSON list in a jsonl: file)')
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"record {index}: the conversation in column {column!r} has no "
                        "assistant message: nothing to train on or to answer")
    return messages


@functools.cache
def _environment():
    """A sandbox as transformers' renderer sets it up (module docstring)."""
    from jinja2 import nodes
    from jinja2.exceptions import TemplateError
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}`: marks assistant text for transformers'
        return_assistant_tokens_mask; here its body renders as it is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)  # jinja's own escapes HTML; templates expect not

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, loopcontrols])
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = tojson
    return env


def _render(template: str, messages: list[dict], add_generation_prompt: bool,
            specials: tuple[tuple[str, str | None], ...]) -> str:
    from jinja2.exceptions import TemplateError

    try:
        return _compiled(template).render(messages=messages,
                                          add_generation_prompt=add_generation_prompt,
                                          **dict(specials))
    except TemplateError as e:
        raise DataError(f"the tokenizer's chat template fails on a conversation of "
                        f"{[m['role'] for m in messages]} ({e})") from None


@functools.cache
def _compiled(template: str):
    return _environment().from_string(template)


@functools.cache
def _layout_of(template: str, specials: tuple[tuple[str, str | None], ...]) -> PromptLayout:
    user = {"role": "user", "content": _SOURCE}
    try:
        prompt = _render(template, [user], True, specials)
        full = _render(template, [user, {"role": "assistant", "content": _ANSWER}], False,
                       specials)
    except DataError as e:
        raise ConfigError(f"data.chat_template: {e}") from None
    answer_at = full.find(_ANSWER)
    if prompt.count(_SOURCE) != 1 or answer_at < 0 or not full[:answer_at].startswith(prompt):
        raise ConfigError("data.chat_template: the tokenizer's chat template does not render "
                          "the assistant's answer after its generation prompt (one user turn, "
                          "then the assistant's); llmjax cannot lay pairs out with it")
    prefix, suffix = prompt.split(_SOURCE)
    # what comes between the generation prompt and the answer (Llama 2's space) is the answer's
    return PromptLayout(prefix, suffix, full[len(prompt):answer_at],
                        full[answer_at + len(_ANSWER):], template, specials)
