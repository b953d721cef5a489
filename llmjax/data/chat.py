"""How a decoder trained on source -> target pairs (objective=seq2seq) sees a pair: the prompt
before the answer, the tokens that end the answer, and the token that stops decoding.

Plain (the default): `<bos> source <eos>` then `target <eos>`. With `data.chat_template`, the
tokenizer's Hugging Face chat template (tokenizer_config.json's `chat_template`, or a
`chat_template.jinja` beside it) lays the source out as a user turn followed by the generation
prompt, and the target as the assistant's answer with the template's end of turn after it
(ChatML's `<|im_end|>`, Llama 3's `<|eot_id|>`, ...), whose first token stops decoding. The
template is rendered once, around marker texts, to find those pieces; a prompt or answer is then
tokenized whole, as `apply_chat_template` does (pieces joined only when a source is cut).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import ml_collections
import numpy as np

from llmjax.configs import ConfigError
from llmjax.data.tokenizers import Tokenizer

_SOURCE, _ANSWER = "LLMJAX_SOURCE_9f1c", "LLMJAX_ANSWER_9f1c"  # marker texts in a render


@dataclasses.dataclass(frozen=True)
class PromptLayout:
    """Texts around a source (`prefix`, `suffix`), before and after an answer (`lead`, `end`:
    trained with it), or None for the plain layout's special ids."""

    prefix: str | None = None
    suffix: str | None = None
    lead: str = ""
    end: str | None = None

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


def prompt_layout(config: ml_collections.ConfigDict, tokenizer: Tokenizer) -> PromptLayout:
    """The layout `config` asks for (`data.chat_template`)."""
    if not config.data.chat_template:
        return PromptLayout()
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ConfigError("data.chat_template=True but the tokenizer has no chat template "
                          "(tokenizer_config.json's chat_template, or chat_template.jinja, in "
                          "its Hugging Face folder): fine-tune from a chat model's folder, or "
                          "unset data.chat_template")
    specials = {f"{role}_token": tokenizer.token_text(getattr(tokenizer, f"{role}_id"))
                for role in ("bos", "eos", "pad", "unk")}
    return _layout_of(template, tuple(sorted(specials.items())))


@functools.cache
def _layout_of(template: str, specials: tuple[tuple[str, str | None], ...]) -> PromptLayout:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception  # as transformers' renderer provides
    compiled = env.from_string(template)
    user = {"role": "user", "content": _SOURCE}
    try:
        prompt = compiled.render(messages=[user], add_generation_prompt=True, **dict(specials))
        full = compiled.render(messages=[user, {"role": "assistant", "content": _ANSWER}],
                               add_generation_prompt=False, **dict(specials))
    except TemplateError as e:
        raise ConfigError(f"data.chat_template: the tokenizer's chat template fails on a "
                          f"user turn and an assistant turn ({e})") from None
    answer_at = full.find(_ANSWER)
    if prompt.count(_SOURCE) != 1 or answer_at < 0 or not full[:answer_at].startswith(prompt):
        raise ConfigError("data.chat_template: the tokenizer's chat template does not render "
                          "the assistant's answer after its generation prompt (one user turn, "
                          "then the assistant's); llmjax cannot lay pairs out with it")
    prefix, suffix = prompt.split(_SOURCE)
    # what comes between the generation prompt and the answer (Llama 2's space) is the answer's
    return PromptLayout(prefix, suffix, full[len(prompt):answer_at],
                        full[answer_at + len(_ANSWER):])
