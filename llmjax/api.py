"""The Python API: `llmjax.load(workdir)` -> Run, for notebooks and scripts (the CLI uses it)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from flax import nnx

from llmjax import configs, validation
from llmjax.configs import ConfigError
from llmjax.data.tokenizers import Tokenizer, load_tokenizer, same_vocabulary
from llmjax.objectives.base import cross_entropy
from llmjax.train import checkpoint
from llmjax.train import state as state_lib

# generate's draft that is the run's own multi-token-prediction module, not another run
MTP_DRAFT = "mtp"


@dataclasses.dataclass(frozen=True)
class Decoding:
    """How `generate` and `chat` decode: config.generate's keys, overridden per call."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repetition_penalty: float
    seed: int
    beam_size: int
    draft_tokens: int

    @classmethod
    def of(cls, defaults: ml_collections.ConfigDict, **given) -> Decoding:
        """The `given` options (None: `defaults`', config.generate's), typed and checked."""
        values = {}
        for field in dataclasses.fields(cls):
            value = given.get(field.name)
            value = defaults[field.name] if value is None else value
            values[field.name] = (int if field.type == "int" else float)(value)
        options = cls(**values)
        validation.check_generate_options(**dataclasses.asdict(options))
        return options

    def sampling(self) -> dict:
        """The decoders' sampling keywords."""
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "min_p": self.min_p, "repetition_penalty": self.repetition_penalty}


@dataclasses.dataclass
class Run:
    """A trained run: resolved config, tokenizer, and the NNX model with restored parameters."""

    config: ml_collections.ConfigDict
    tokenizer: Tokenizer
    model: nnx.Module
    step: int
    # draft runs loaded for speculative decoding, by path
    _drafts: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def _check_length(self, length: int) -> None:
        if length > self.config.model.max_len:
            raise ConfigError(f"a text is {length} tokens long (with its special tokens), "
                              f"over model.max_len={self.config.model.max_len}: shorten it")

    def _batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded [<bos>] + tokens [B, L] and segment ids (1 = token, 0 = padding)."""
        ids = [np.concatenate([[self.tokenizer.bos_id], self.tokenizer.encode_array(t)])
               for t in texts]
        self._check_length(max(len(x) for x in ids))
        return _pad(ids, 0)

    @property
    def is_seq2seq(self) -> bool:
        return hasattr(self.model, "encode")  # the capability: a source to encode

    @property
    def is_decoder_lm(self) -> bool:
        """A decoder that predicts next tokens (what drafts and distillation teachers are):
        it decodes, has no source to encode, and has a language-model head."""
        return (not self.is_seq2seq and hasattr(self.model, "decode")
                and "lm" in getattr(self.model, "heads", ("lm",)))

    def _sources(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encoder inputs as in training: tokens + <eos> [B, S], right-padded, and segments."""
        from llmjax.objectives.seq2seq import seq2seq_arrays

        empty = np.zeros((0,), np.int32)
        ids = self.tokenizer.encode_batch(list(texts))
        length = max(len(x) for x in ids) + 1
        self._check_length(length)
        arrays = seq2seq_arrays(((x, empty) for x in ids), length, 1, self.tokenizer).arrays
        return arrays["inputs"], arrays["input_segments"]

    def hidden_states(self, texts: Sequence[str]) -> np.ndarray:
        """[batch, length, emb_dim]; position 0 is <bos>, padding positions are zero. For an
        encoder-decoder: the encoder's output over text + <eos>."""
        if not texts:
            return np.zeros((0, 0, self.config.model.emb_dim), np.float32)
        tokens, segments = self._sources(texts) if self.is_seq2seq else self._batch(texts)
        h = self._apply(_hidden_states, tokens, segments, positions=tokens.shape[1])
        return np.asarray(h, np.float32) * segments[..., None]

    def logits(self, texts: Sequence[str], targets: Sequence[str] | None = None) -> np.ndarray:
        """LM logits [batch, length, vocab] (position i predicts token i + 1). For an
        encoder-decoder, `texts` are the sources and the decoder reads <bos> + `targets`
        (default: just <bos>). For a classification run, class logits [batch, classes] (a
        regression run's scores [batch, 1]), with `targets` as the text pairs."""
        if self.prediction in ("label", "score"):
            texts, pairs = self._texts_and_pairs(list(texts), targets)
            return np.asarray(self._head_outputs(texts, pairs), np.float32)
        if not texts:
            return np.zeros((0, 0, self.config.model.vocab_size), np.float32)
        if not self.is_seq2seq:
            tokens, segments = self._batch(texts)
            return np.asarray(self._apply(_lm_logits, tokens, segments,
                                          positions=tokens.shape[1]))
        sources, source_segments = self._sources(texts)
        decoder, decoder_segments = self._batch(targets or [""] * len(texts))
        return np.asarray(self._apply(_seq2seq_logits, sources, decoder, source_segments,
                                      decoder_segments, positions=decoder.shape[1]))

    def log_likelihood(self, texts: Sequence[str], continuations: Sequence[str] | None = None
                       ) -> np.ndarray:
        """Natural-log probabilities [B] (for scoring and multiple-choice evaluation). A
        decoder: of each text's tokens after <bos>; with `continuations`, of each continuation's
        tokens after its text. A seq2seq run (encoder-decoder, or decoder trained on pairs): of
        each continuation and <eos> given its text as the source (continuations required)."""
        if continuations is not None and len(continuations) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(continuations)} continuations")
        if not texts:
            return np.zeros((0,), np.float64)
        encode = self.tokenizer.encode_array
        if self.is_seq2seq:
            if continuations is None:
                raise ValueError("an encoder-decoder scores continuations (targets) given texts "
                                 "(sources): pass continuations")
            from llmjax.objectives.seq2seq import seq2seq_arrays

            sources = [encode(t) for t in texts]
            targets = [encode(c) for c in continuations]
            source_len, target_len = (max(len(x) for x in sides) + 1 for sides in
                                      (sources, targets))
            self._check_length(max(source_len, target_len))
            a = seq2seq_arrays(zip(sources, targets, strict=True), source_len, target_len,
                               self.tokenizer).arrays
            return np.asarray(self._apply(_seq2seq_log_likelihood, a["inputs"],
                                          a["decoder_inputs"], a["input_segments"],
                                          a["target_segments"], a["targets"], a["weights"]),
                              np.float64)
        if self.answers_prompts:  # a seq2seq decoder: <bos> source <eos> | target <eos>
            if continuations is None:
                raise ValueError("a seq2seq run scores continuations (targets) given texts "
                                 "(sources): pass continuations")
            layout = self._prompt_layout()
            rows = list(zip(layout.prompts(texts, self.tokenizer, self.config.seq_len),
                            layout.completions(continuations, self.tokenizer,
                                               self.config.model.max_len), strict=True))
        else:
            contexts = [np.concatenate([[self.tokenizer.bos_id], encode(t)]) for t in texts]
            if continuations is None:  # the whole text, after <bos>
                contexts, continuations = [c[:1] for c in contexts], texts
            rows = [(ctx, encode(c)) for ctx, c in zip(contexts, continuations, strict=True)]
        tokens, segments = _pad([np.concatenate(row) for row in rows], self.tokenizer.pad_id)
        self._check_length(tokens.shape[1])
        weights = np.zeros(tokens.shape, np.float32)
        for i, (ctx, cont) in enumerate(rows):  # position j predicts token j + 1
            weights[i, len(ctx) - 1:len(ctx) + len(cont) - 1] = 1.0
        targets = np.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1)
        return np.asarray(self._apply(_lm_log_likelihood, tokens, segments, targets, weights),
                          np.float64)

    def _head_outputs(self, texts: list[str], pairs: list[str | None]) -> np.ndarray:
        """The task head's outputs [B, C] for a batch of texts (pairs), right-padded."""
        if getattr(self.model, "classifier", None) is None:  # the capability, not a name
            raise ConfigError(f"predict needs a classification or regression run; this run's "
                              f"objective is {self.config.objective!r}")
        if not texts:
            return np.zeros((0, self.config.model.num_classes or 1), np.float64)
        from llmjax.objectives.classification import encode_pair

        encoded = [encode_pair(self.tokenizer, t, p, self.config.seq_len)
                   for t, p in zip(texts, pairs, strict=True)]
        tokens, segments = _pad([ids for ids, _ in encoded], self.tokenizer.pad_id)
        types, _ = _pad([kinds for _, kinds in encoded], 0)
        return np.asarray(self._apply(_class_logits, tokens, types, segments), np.float64)

    def _texts_and_pairs(self, text: str | Sequence[str], text_pair: str | Sequence[str] | None
                         ) -> tuple[list[str], list[str | None]]:
        texts = [text] if isinstance(text, str) else list(text)
        if text_pair is None:
            # a run trained on pairs has only seen pairs (an imported head's task is unknown)
            pair_column = self.config.data.text_pair_column
            if pair_column:
                raise ConfigError(f"this run classifies text pairs (data.text_pair_column="
                                  f"{pair_column!r}): give text_pair (--text_pair=TEXT)")
            return texts, [None] * len(texts)
        pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
        if len(pairs) != len(texts):
            raise ConfigError(f"{len(texts)} texts but {len(pairs)} text pairs: give one pair "
                              "per text")
        return texts, pairs

    def _apply(self, fn, *arrays: np.ndarray, positions: int | None = None) -> np.ndarray:
        """fn(model, *arrays) for arrays [B, L] (right-padded, segment 0 = padding), jitted.
        The arrays are grown to bucket sizes first, so one compiled program serves many batch
        sizes and lengths; the outputs are cut back to B rows (and, for outputs per position,
        to `positions`)."""
        graphdef, params = nnx.split(self.model)
        rows = arrays[0].shape[0]
        grown = [_grow(a, _bucket(rows), self._length_bucket(a.shape[1]), 0) for a in arrays]
        out = np.asarray(_jitted_apply(fn, graphdef, params, *(jnp.asarray(a) for a in grown)))
        return out[:rows] if positions is None else out[:rows, :positions]

    def _length_bucket(self, length: int) -> int:
        return _bucket(length, smallest=16, cap=self.config.model.max_len)

    @property
    def predicts_scores(self) -> bool:
        """Does the task head give a score (regression) rather than class probabilities?"""
        return self.prediction == "score"

    @property
    def prediction(self) -> str | None:
        """What the objective's head predicts: 'label' (classification), 'score' (regression),
        'tags' (token classification), 'answer' (question answering), or None (no
        prediction head)."""
        from llmjax.objectives import get_objective

        return getattr(get_objective(self.config.objective), "prediction", None)

    def score(self, text: str | Sequence[str], text_pair: str | Sequence[str] | None = None
              ) -> float | list[float]:
        """A regression run's predicted score; a list of texts (and pairs) gives a list."""
        if not self.predicts_scores:
            raise ConfigError(f"score needs a regression run; this run's objective is "
                              f"{self.config.objective!r} (use predict)")
        scores = self._head_outputs(*self._texts_and_pairs(text, text_pair))[:, 0].tolist()
        return scores[0] if isinstance(text, str) else scores

    def predict(self, text: str | Sequence[str], text_pair: str | Sequence[str] | None = None
                ) -> tuple[str, dict[str, float]] | list[tuple[str, dict[str, float]]]:
        """A classification run's (label, {label: probability}); a list of texts (and pairs)
        gives a list, computed as one batch."""
        if self.predicts_scores:
            raise ConfigError("predict gives class probabilities; a regression run's output "
                              "is run.score(text)")
        from llmjax.objectives.classification import label_names

        logits = self._head_outputs(*self._texts_and_pairs(text, text_pair))
        names = label_names(self.config)
        out = [(names[int(p.argmax())], dict(zip(names, p.tolist(), strict=True)))
               for p in np.asarray(jax.nn.softmax(logits, axis=-1), np.float64)]
        return out[0] if isinstance(text, str) else out

    def tag(self, text: str | Sequence[str]) -> list[tuple[str, str]] | list[list[tuple[str, str]]]:
        """A token classification run's [(word, label)] for a text split at whitespace (the
        words past seq_len are left out); a list of texts gives a list, as one batch."""
        if self.prediction != "tags":
            raise ConfigError(f"tag needs a token_classification run; this run's objective is "
                              f"{self.config.objective!r}")
        from llmjax.objectives.classification import label_names
        from llmjax.objectives.token_classification import tagged_words, word_pieces

        names, tok = label_names(self.config), self.tokenizer
        lines = [text.split()] if isinstance(text, str) else [t.split() for t in text]
        sentences, laid_out = [], []
        for words, pieces in zip(lines, word_pieces(lines, tok), strict=True):
            words = [w for w, p in zip(words, pieces, strict=True) if len(p)]  # none: unscored
            sentences.append(words)
            laid_out.append(tagged_words(words, [p for p in pieces if len(p)],
                                         [0] * len(words), self.config.seq_len, tok))
        if not laid_out:
            return []
        tokens, segments = _pad([t for t, _, _ in laid_out], tok.pad_id)
        logits = self._apply(_token_class_logits, tokens, np.zeros_like(tokens), segments,
                             positions=tokens.shape[1])
        out = []
        for words, (_, _, weights), row in zip(sentences, laid_out, logits, strict=True):
            firsts = np.flatnonzero(weights)  # each word's first token, the words that fit
            out.append([(w, names[int(row[at].argmax())])  # the words past seq_len: none
                        for w, at in zip(words, firsts, strict=False)])
        return out[0] if isinstance(text, str) else out

    def answer(self, question: str | Sequence[str], context: str | Sequence[str]
               ) -> str | list[str]:
        """A question answering run's answer to `question`: a span of `context` (whole words;
        '' for no answer, only with qa.no_answer). Lists of questions and contexts give a
        list."""
        if self.prediction != "answer":
            raise ConfigError(f"answer needs a question_answering run; this run's objective is "
                              f"{self.config.objective!r}")
        from llmjax.objectives.question_answering import Passage, passage_windows

        questions, contexts = self._texts_and_pairs(question, context)
        passages = [Passage.of(q, c) for q, c in zip(questions, contexts, strict=True)]
        answers = self.answer_windows(passage_windows(passages, self.tokenizer, self.config,
                                                      labelled=False))
        return answers[0] if isinstance(question, str) else answers

    def answer_windows(self, windows) -> list[str]:
        """Each passage's answer from its question_answering.Windows, computed a batch of
        windows at a time."""
        from llmjax.objectives.question_answering import windows_answers

        a, batch = windows.arrays, self.config.batch_size
        logits = [self._apply(_token_class_logits, *(a[k][lo: lo + batch] for k in
                                                      ("tokens", "token_types", "segment_ids")),
                              positions=self.config.seq_len)
                  for lo in range(0, len(a["tokens"]), batch)]
        return windows_answers(windows, np.concatenate(logits) if logits else
                               np.zeros((0, self.config.seq_len, 2), np.float32), self.config)

    def generate(self, prompt: str | Sequence[str], max_new_tokens: int | None = None,
                 temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None,
                 beam_size: int | None = None, *, min_p: float | None = None,
                 repetition_penalty: float | None = None, draft: str | Run | None = None,
                 draft_tokens: int | None = None) -> str | list[str]:
        """The continuation of `prompt` (stops at <eos>); for an encoder-decoder, the output
        for `prompt` as the source (beam search when beam_size > 1). Defaults from
        config.generate. A list of prompts decodes as one batch (a decoder's left-padded) and
        gives a list; greedy and beam outputs equal those of one prompt at a time.

        `draft` (a Run, or a workdir / Hugging Face folder; default generate.draft_workdir):
        a smaller decoder with the same tokenizer that proposes `draft_tokens` tokens per call
        of this model (speculative decoding): greedy output equal to this model's alone, and
        samples from its distribution."""
        if not hasattr(self.model, "decode"):
            raise ConfigError(f"generate needs a model that decodes; this run's model.arch is "
                             f"{self.config.model.arch!r}")
        self._check_language_model("generate")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        options = Decoding.of(self.config.generate, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repetition_penalty=repetition_penalty, seed=seed,
                              beam_size=beam_size, draft_tokens=draft_tokens)
        draft_run = self._draft_run(draft, options)
        if self.is_seq2seq:
            if draft_run is not None:
                raise ConfigError("speculative decoding drafts for a decoder; this run is an "
                                  "encoder-decoder: leave generate.draft_workdir empty")
            outputs = self._transduce(prompts, options) if prompts else []
        else:
            outputs = self._continue(prompts, options, draft_run) if prompts else []
        return outputs[0] if isinstance(prompt, str) else outputs

    def _check_language_model(self, command: str) -> None:
        """A decoder trained for classification or regression has no language-model head."""
        if "lm" not in getattr(self.model, "heads", ("lm",)):
            raise ConfigError(f"{command} needs a language model; this run's decoder was "
                              f"trained with objective={self.config.objective} (use predict)")

    def chat(self, messages: Sequence[dict] | Sequence[Sequence[dict]],
             max_new_tokens: int | None = None, temperature: float | None = None,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             beam_size: int | None = None, *, min_p: float | None = None,
             repetition_penalty: float | None = None, draft: str | Run | None = None,
             draft_tokens: int | None = None) -> str | list[str]:
        """The assistant's reply to a conversation ([{"role": ..., "content": ...}, ...]),
        laid out by the tokenizer's chat template with its generation prompt and decoded up to
        the template's end of turn; a list of conversations decodes as one batch. Sampling
        (and a speculative `draft`) as `generate`'s."""
        from llmjax.data.chat import chat_layout

        if not hasattr(self.model, "decode") or self.is_seq2seq:
            raise ConfigError(f"chat needs a decoder; this run's model.arch is "
                              f"{self.config.model.arch!r}")
        self._check_language_model("chat")
        one = bool(messages) and isinstance(messages[0], dict)
        conversations = [list(messages)] if one else [list(c) for c in messages]
        layout = chat_layout(self.tokenizer, "chat", "chat with a run fine-tuned from, or "
                             "imported from, a chat model's folder")
        options = Decoding.of(self.config.generate, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repetition_penalty=repetition_penalty, seed=seed,
                              beam_size=beam_size, draft_tokens=draft_tokens)
        draft_run = self._draft_run(draft, options)
        # the latest turns of a long conversation
        keep = max(self.config.model.max_len - options.max_new_tokens, 1)
        ids = [layout.chat_prompt(c, self.tokenizer)[-keep:] for c in conversations]
        replies = self._continue_ids(ids, layout, options, draft_run) if ids else []
        return replies[0] if one else replies

    @property
    def answers_prompts(self) -> bool:
        """A seq2seq run (an encoder-decoder, or a decoder fine-tuned on source -> target
        pairs): generate's output answers the prompt rather than continuing it."""
        from llmjax.objectives import get_objective

        objective = get_objective(self.config.objective)
        # seq2seq decoders (decoded in eval too), and DPO's, trained on the same layout
        return self.is_seq2seq or getattr(objective, "answers_prompts",
                                          getattr(objective, "decodes", False))

    def _draft_run(self, draft: str | Run | None, options: Decoding) -> Run | str | None:
        """The draft model for speculative decoding (`draft`, else generate.draft_workdir;
        None: decode without one), loaded once per path and checked against this run; or
        "mtp": this run's own multi-token-prediction module."""
        if draft is None:
            draft = self.config.generate.draft_workdir or None
        if draft is None:
            return None
        if draft == MTP_DRAFT:
            if not getattr(self.model, "mtp", None):
                raise ConfigError("draft=mtp drafts with the run's multi-token-prediction "
                                  "module; this run has none (model.mtp_depth=0): train with "
                                  "--config.model.mtp_depth=1, or give a draft run's workdir")
            draft_run = MTP_DRAFT
        elif isinstance(draft, Run):
            draft_run = draft
        else:
            key = str(draft)
            if key not in self._drafts:
                self._drafts[key] = load(key)
            draft_run = self._drafts[key]
        if draft_run != MTP_DRAFT:
            check_draft(self, draft_run)
        if options.beam_size != 1 or options.repetition_penalty != 1.0:
            raise ConfigError(f"speculative decoding samples or decodes greedily, without a "
                              f"repetition penalty (beam_size={options.beam_size}, "
                              f"repetition_penalty={options.repetition_penalty}): set "
                              "beam_size=1 and repetition_penalty=1, or decode without a draft")
        return draft_run

    def _continue(self, prompts: list[str], options: Decoding,
                  draft: Run | str | None = None) -> list[str]:
        """A decoder's continuations of left-padded prompts: <bos> + the prompt, or for a
        seq2seq decoder the prompt laid out as in its training (<bos> source <eos>)."""
        from llmjax.data.chat import PromptLayout

        tok = self.tokenizer
        layout = PromptLayout()
        if self.answers_prompts:
            layout = self._prompt_layout()
            ids = layout.prompts(prompts, tok, self.config.seq_len)
        else:
            # the end of a long prompt
            keep = max(self.config.model.max_len - options.max_new_tokens, 1)
            ids = [np.concatenate([[tok.bos_id], tok.encode_array(p)])[-keep:] for p in prompts]
        return self._continue_ids(ids, layout, options, draft)

    def _continue_ids(self, ids: list[np.ndarray], layout, options: Decoding,
                      draft: Run | str | None = None) -> list[str]:
        """The answers (`layout.answer` of the text up to its stop token) that continue prompt
        ids, left-padded into one batch (with a `draft` run, or "mtp", proposing tokens:
        speculative)."""
        from llmjax.decoding.decoder import (
            continue_prompts,
            self_speculate_prompts,
            speculate_prompts,
        )
        from llmjax.decoding.speculative import cache_slots

        tok, max_new = self.tokenizer, options.max_new_tokens
        stop_id = layout.stop_id(tok)
        tokens, valid = _pad(ids, tok.pad_id, left=True)
        # A longer bucket only where the decoded tokens still fit after it.
        rows, length = _bucket(len(ids)), tokens.shape[1]
        length = min(self._length_bucket(length),
                     max(self.config.model.max_len - max_new, length))
        tokens = _grow(tokens, rows, length, tok.pad_id, left=True)
        valid = _grow(valid, rows, length, 0, left=True)
        total = min(tokens.shape[1] + max_new, self.config.model.max_len)
        max_new = total - tokens.shape[1]
        if max_new <= 0:
            return [""] * len(ids)
        graphdef, params = nnx.split(self.model)
        rng = jax.random.PRNGKey(options.seed)
        if draft is not None:
            sampling = options.sampling()
            del sampling["repetition_penalty"]  # 1: checked with the draft
            k = 1 if draft == MTP_DRAFT else options.draft_tokens
            common = {"cache_len": cache_slots(tokens.shape[1], max_new, k),
                      "max_new_tokens": max_new, "eos_id": stop_id, "pad_id": tok.pad_id,
                      **sampling}
            if draft == MTP_DRAFT:
                new, calls = self_speculate_prompts(graphdef, params, jnp.asarray(tokens),
                                                    jnp.asarray(valid), rng, **common)
            else:
                draft_graphdef, draft_params = nnx.split(draft.model)
                new, calls = speculate_prompts(
                    graphdef, params, draft_graphdef, draft_params, jnp.asarray(tokens),
                    jnp.asarray(valid), rng, draft_tokens=k, **common)
            logging.info("speculative decoding: %d calls of the model for up to %d new tokens "
                         "(K = %d drafts per call)", int(calls) + 1, max_new, k)
        else:
            new = continue_prompts(graphdef, params, jnp.asarray(tokens), jnp.asarray(valid),
                                   rng, cache_len=total, max_new_tokens=max_new,
                                   beam_size=options.beam_size,
                                   alpha=float(self.config.generate.length_penalty),
                                   eos_id=stop_id, pad_id=tok.pad_id, **options.sampling())
        return [layout.answer(tok.decode_output(row, stop_id))
                for row in np.asarray(new)[:len(ids)]]

    def _prompt_layout(self):
        """How a seq2seq decoder's prompts and answers are laid out (data/chat.py)."""
        from llmjax.data.chat import prompt_layout

        return prompt_layout(self.config, self.tokenizer)

    def _transduce(self, sources: list[str], options: Decoding) -> list[str]:
        """An encoder-decoder's outputs for a batch of sources."""
        from llmjax.decoding.encoder_decoder import decode

        inputs, segments = self._sources(sources)
        rows, length = _bucket(len(sources)), self._length_bucket(inputs.shape[1])
        inputs = _grow(inputs, rows, length, self.tokenizer.pad_id)
        segments = _grow(segments, rows, length, 0)
        max_new = max(min(options.max_new_tokens, self.config.model.max_len - 1), 1)
        graphdef, params = nnx.split(self.model)
        tokens = decode(graphdef, params, jnp.asarray(inputs), jnp.asarray(segments),
                        jax.random.PRNGKey(options.seed), max_new_tokens=max_new,
                        beam_size=options.beam_size,
                        alpha=float(self.config.generate.length_penalty),
                        bos_id=self.tokenizer.bos_id, eos_id=self.tokenizer.eos_id,
                        pad_id=self.tokenizer.pad_id, **options.sampling())
        return [self.tokenizer.decode_output(row) for row in np.asarray(tokens)[:len(sources)]]


def check_draft(run: Run, draft: Run) -> None:
    """Raises ConfigError unless `draft` can propose tokens to `run` (speculative decoding):
    a decoder language model over the same vocabulary."""
    if not draft.is_decoder_lm:
        raise ConfigError(f"a draft model is a decoder language model; this draft's "
                          f"model.arch={draft.config.model.arch!r}, objective="
                          f"{draft.config.objective!r}: draft with a causal-LM run")
    sizes = (run.config.model.vocab_size, draft.config.model.vocab_size)
    if sizes[0] != sizes[1] or not same_vocabulary(run.tokenizer, draft.tokenizer):
        raise ConfigError(f"the draft model's tokenizer is not this run's (vocab_size "
                          f"{sizes[1]} vs {sizes[0]}): a draft proposes this run's tokens; "
                          "train it with tokenizer.path=RUN/tokenizer (this run's)")
    if draft.config.model.max_len < run.config.model.max_len:
        logging.warning("the draft model was trained on up to %d tokens, this run on %d: past "
                        "them its proposals are kept less often (the output is the same)",
                        draft.config.model.max_len, run.config.model.max_len)


def _pad(rows: Sequence[np.ndarray], pad_value: int, left: bool = False
         ) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ids padded with `pad_value` to one length, on the right (or the left): tokens
    [B, L] int32 and validity [B, L] (1 = token, 0 = padding)."""
    length = max(len(row) for row in rows)
    tokens = np.full((len(rows), length), pad_value, np.int32)
    valid = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if left else slice(0, len(row))
        tokens[i, span], valid[i, span] = row, 1
    return tokens, valid


def _bucket(n: int, smallest: int = 1, cap: int | None = None) -> int:
    """The size `n` is padded to: the next power of two >= max(n, smallest), at most `cap`
    but never below n. A handful of sizes means a handful of compiled programs."""
    size = max(smallest, 1 << (n - 1).bit_length())
    return max(n, size if cap is None else min(size, cap))


def _grow(array_BxL: np.ndarray, rows: int, length: int, fill: int, left: bool = False
          ) -> np.ndarray:
    """`array_BxL` grown to [rows, length]: new positions hold `fill` (on the right, or on the
    left), new rows repeat row 0, so they compute nothing degenerate; their outputs are
    dropped."""
    b, current = array_BxL.shape
    grown = np.full((b, length), fill, array_BxL.dtype)
    span = slice(length - current, length) if left else slice(0, current)
    grown[:, span] = array_BxL
    return np.concatenate([grown, np.repeat(grown[:1], rows - b, axis=0)])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _jitted_apply(fn, graphdef, params, *arrays):
    return fn(nnx.merge(graphdef, params), *arrays)


def _hidden_states(model, tokens_BxL, segments_BxL):
    return model.hidden_states(tokens_BxL, segment_ids=segments_BxL)


def _lm_logits(model, tokens_BxL, segments_BxL):
    return model(tokens_BxL, segment_ids=segments_BxL)


def _seq2seq_logits(model, sources_BxS, decoder_BxT, source_segments_BxS, decoder_segments_BxT):
    return model(sources_BxS, decoder_BxT, segment_ids=source_segments_BxS,
                 decoder_segment_ids=decoder_segments_BxT)


def _lm_log_likelihood(model, tokens_BxL, segments_BxL, targets_BxL, weights_BxL):
    logits = model(tokens_BxL, segment_ids=segments_BxL)
    return -(cross_entropy(logits, targets_BxL) * weights_BxL).sum(-1)


def _seq2seq_log_likelihood(model, sources_BxS, decoder_BxT, source_segments_BxS,
                            decoder_segments_BxT, targets_BxT, weights_BxT):
    logits = _seq2seq_logits(model, sources_BxS, decoder_BxT, source_segments_BxS,
                             decoder_segments_BxT)
    return -(cross_entropy(logits, targets_BxT) * weights_BxT).sum(-1)


def _class_logits(model, tokens_BxL, types_BxL, segments_BxL):
    return model.classify(tokens_BxL, token_types=types_BxL, segment_ids=segments_BxL)


def _token_class_logits(model, tokens_BxL, types_BxL, segments_BxL):
    hidden = model.hidden_states(tokens_BxL, token_types=types_BxL, segment_ids=segments_BxL)
    return model.token_class_logits(hidden)


def load(path: str | epath.Path, step: int | None = None,
         config: ml_collections.ConfigDict | None = None) -> Run:
    """A run from its workdir: config.json, tokenizer/ and the checkpoint at `step` (latest by
    default); or a Hugging Face model folder (config.json with a model_type, the weights and
    tokenizer files), converted in memory. `config` replaces the saved config (e.g. with
    command-line overrides)."""
    from llmjax.convert import hf

    workdir = epath.Path(path)
    if hf.is_hf_folder(workdir):
        if step not in (None, 0):
            raise FileNotFoundError(f"{workdir} is a Hugging Face folder, which holds one set of "
                                    f"weights (step 0): leave the step unset, not {step}")
        config, tokenizer, params = hf.load_folder(workdir, config)
        graphdef, _ = state_lib.abstract_model(config)
        model = nnx.merge(graphdef, jax.tree.map(jnp.asarray, params))
        return Run(config=config, tokenizer=tokenizer, model=model, step=0)
    if config is None:
        config_file = workdir / "config.json"
        if not config_file.exists():
            raise FileNotFoundError(f"{config_file} does not exist: pass the workdir of a run "
                                    "written by `llmjax train`")
        config = configs.from_json(config_file.read_text())
    tokenizer = load_tokenizer(workdir / "tokenizer")
    # Shapes only: every parameter comes from the checkpoint, so initialising them (a compiled
    # random draw per shape) would be thrown away.
    graphdef, params = state_lib.abstract_model(config)
    params, step = checkpoint.restore_params(workdir, params, step)
    model = nnx.merge(graphdef, jax.tree.map(jnp.asarray, params))
    return Run(config=config, tokenizer=tokenizer, model=model, step=step)
