"""Direct preference optimisation (DPO; Rafailov et al. 2023) of a decoder: from (prompt,
chosen, rejected) records the policy learns to raise the chosen completion's likelihood
against the rejected one's, each measured relative to a frozen reference model — the model the
run starts from (`init.hf_path` or `init.workdir`: usually a supervised fine-tuning run):

    loss = -log σ(β · ((log π(c|x) − log π_ref(c|x)) − (log π(r|x) − log π_ref(r|x))))

Each pair is two rows laid out as seq2seq decoder pairs (data/chat.py: `<bos> prompt <eos>`
then the completion and `<eos>`, or the chat template's turns with `data.chat_template`; chosen
and rejected may also be conversations, rendered whole by the template: `pair_ids`):
`inputs`, `targets`, `segment_ids`, `weights` [2, L] (weight on the completion's tokens), the
chosen row first; `reference_logps` [2], the reference model's log-likelihood of each
completion, computed once when the examples are made (as TRL's precompute_ref_log_probs) — on
one device, or sharded over the mesh with parallel.mode=mesh (objectives/reference.py) — so
training holds one model; `pair_weights` [] (1, 0 for padding),
which the loss is averaged over.

`dpo.loss` picks the loss of the margin z = (log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r)):
`sigmoid` (DPO above; with `dpo.label_smoothing` ε, conservative DPO's −(1−ε) log σ(βz) −
ε log σ(−βz), for pairs whose labels may be wrong), `hinge` (SLiC's max(0, 1 − βz)) or `ipo`
(IPO, Azar et al. 2023: (z − 1/(2β))², on whole-sequence log-likelihoods as the paper writes
it; TRL averages them per token instead).

Metrics: loss; reward_accuracy (the chosen completion's implicit reward β · log π/π_ref above
the rejected one's), reward_margin (their mean difference), chosen_reward and rejected_reward.
At step 0 the policy is the reference: loss = ln 2, rewards 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmjax.data.chat import field_messages, prompt_layout
from llmjax.data.sources import column_text, iter_records
from llmjax.data.text_builder import DataError
from llmjax.data.tokenizers import Tokenizer
from llmjax.objectives.base import NO_REGULARIZERS, MetricSums, Regularizers, cross_entropy
from llmjax.objectives.pairs import ArrayExamples
from llmjax.objectives.reference import ReferenceModel
from llmjax.objectives.seq2seq import prompt_completion_arrays

ROW_KEYS = ("inputs", "targets", "segment_ids", "weights")


def completion_logps(model, rows: dict[str, jax.Array], rng: jax.Array | None = None
                     ) -> jax.Array:
    """[R]: each row's summed log-likelihood of its weighted (completion) tokens."""
    logits = model(rows["inputs"], segment_ids=rows["segment_ids"], rng=rng)
    return -(cross_entropy(logits, rows["targets"]) * rows["weights"]).sum(-1)


def pair_ids(records: Sequence[dict], config: ml_collections.ConfigDict, tokenizer: Tokenizer
             ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(prompt, chosen, rejected) ids of each record: texts laid out as seq2seq pairs are
    (data/chat.py); conversations (chosen / rejected as lists of messages ending with the
    assistant's answer, as UltraFeedback's and TRL's conversational format give them) are
    rendered by the chat template, the prompt being the chosen side's messages before its answer
    (or, for a lone answer, the prompt field: text as a user turn, or messages). Texts are cut
    as seq2seq pairs are; a conversation's prompt keeps its last `seq_len` tokens, its answers
    their first `target_seq_len`."""
    d = config.data
    layout = prompt_layout(config, tokenizer)
    prompts, chosen, rejected = [], [], []
    for i, record in enumerate(iter_records(records)):
        sides = [field_messages(record, c) for c in (d.chosen_column, d.rejected_column)]
        if sides[0] is None or sides[1] is None:
            prompts.append(column_text(record, d.prompt_column))
            chosen.append(column_text(record, d.chosen_column))
            rejected.append(column_text(record, d.rejected_column))
            continue
        if layout.is_plain:
            raise DataError(f"record {i}: chosen and rejected are conversations; lay them out "
                            "with the tokenizer's chat template: set data.chat_template=True")
        if any(side[-1]["role"] != "assistant" for side in sides):
            raise DataError(f"record {i}: a conversation in {d.chosen_column!r} or "
                            f"{d.rejected_column!r} does not end with the assistant's answer")
        context = sides[0][:-1]
        if not context:
            context = field_messages(record, d.prompt_column) or [
                {"role": "user", "content": column_text(record, d.prompt_column)}]
        laid_out = layout.conversations([context + side[-1:] for side in sides], tokenizer)
        at = laid_out[0].last_answer_at
        prompts.append(laid_out[0].ids[:at][-config.seq_len:])
        chosen.append(laid_out[0].ids[at:][:config.target_seq_len])
        rejected.append(laid_out[1].ids[laid_out[1].last_answer_at:][:config.target_seq_len])
    if not prompts or isinstance(prompts[0], str):  # every record plain (or none)
        return (layout.prompts(prompts, tokenizer, config.seq_len),
                layout.completions(chosen, tokenizer, config.target_seq_len),
                layout.completions(rejected, tokenizer, config.target_seq_len))
    if any(isinstance(p, str) for p in prompts):
        raise DataError("preference records mix texts and conversations in "
                        f"{d.chosen_column!r} / {d.rejected_column!r}: give every record one "
                        "kind")
    return prompts, chosen, rejected


class DirectPreference:
    name = "dpo"
    answers_prompts = True  # `generate` lays a prompt out as training did, and answers it
    loss_weights = {"loss": "pair_weights"}  # the loss is a mean over pairs

    def __init__(self):
        self.beta: float | None = None  # these three set by resolve_config
        self.loss_type, self.label_smoothing = "sigmoid", 0.0
        self._reference: ReferenceModel | None = None  # made once, at the first examples

    def resolve_config(self, config: ml_collections.ConfigDict) -> None:
        self.beta = float(config.dpo.beta)
        self.loss_type = config.dpo.loss
        self.label_smoothing = float(config.dpo.label_smoothing)

    @staticmethod
    def example_length(config: ml_collections.ConfigDict) -> int:
        """Tokens per example, for FLOP counts: two rows of prompt + completion."""
        return 2 * (config.seq_len + config.target_seq_len)

    def model_kwargs(self, config: ml_collections.ConfigDict) -> dict:
        return {}

    def make_examples(self, records: Sequence[dict], tokenizer: Tokenizer,
                      config: ml_collections.ConfigDict, *, train: bool) -> ArrayExamples:
        prompt_ids, chosen_ids, rejected_ids = pair_ids(records, config, tokenizer)
        length = config.seq_len + config.target_seq_len
        rows = prompt_completion_arrays(  # chosen, rejected, chosen, rejected, ...
            [p for p in prompt_ids for _ in range(2)],
            [c for pair in zip(chosen_ids, rejected_ids, strict=True) for c in pair],
            length, tokenizer.pad_id).arrays
        n = len(prompt_ids)
        arrays = {k: rows[k].reshape(n, 2, length) for k in ROW_KEYS}
        arrays["reference_logps"] = self._reference_logps(rows, config)
        arrays["pair_weights"] = np.ones((n,), np.float32)
        return ArrayExamples(arrays)

    def _reference_logps(self, rows: dict[str, np.ndarray], config: ml_collections.ConfigDict
                         ) -> np.ndarray:
        """[N, 2] reference log-likelihoods of the rows' completions, a fixed-size batch of
        rows at a time (one compiled program)."""
        if self._reference is None:
            self._reference = ReferenceModel(config, completion_logps)
        chunk = 2 * config.batch_size // jax.process_count()  # this process's share of a call
        logps = self._reference.chunked({k: rows[k] for k in ROW_KEYS}, chunk)
        return logps.reshape(-1, 2)

    def release_reference(self) -> None:
        """Frees the reference model once every split's examples are made."""
        self._reference = None

    def _pair_loss(self, margin: jax.Array) -> jax.Array:
        """[B] loss of each pair from beta * z (module docstring)."""
        if self.loss_type == "hinge":
            return jax.nn.relu(1.0 - margin)
        if self.loss_type == "ipo":
            return jnp.square(margin / self.beta - 1.0 / (2.0 * self.beta))
        e = self.label_smoothing  # softplus(-x) = -log sigmoid(x)
        return (1.0 - e) * jax.nn.softplus(-margin) + e * jax.nn.softplus(margin)

    def loss(self, model, batch: dict[str, jax.Array], rng: jax.Array | None,
             regularizers: Regularizers = NO_REGULARIZERS) -> MetricSums:
        if self.beta is None:
            raise RuntimeError("dpo: call resolve_config(config) first (it reads dpo.beta)")
        pairs, _, length = batch["inputs"].shape
        rows = {k: batch[k].reshape(2 * pairs, length) for k in ROW_KEYS}
        logps = completion_logps(model, rows, rng).reshape(pairs, 2)
        rewards = self.beta * (logps - batch["reference_logps"])  # [B, 2] implicit rewards
        margin = rewards[:, 0] - rewards[:, 1]  # beta * z
        w = batch["pair_weights"]
        count = w.sum()
        return {"loss": ((self._pair_loss(margin) * w).sum(), count),
                "reward_accuracy": (((margin > 0) * w).sum(), count),
                "reward_margin": ((margin * w).sum(), count),
                "chosen_reward": ((rewards[:, 0] * w).sum(), count),
                "rejected_reward": ((rewards[:, 1] * w).sum(), count)}
