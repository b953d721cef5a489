"""The `generated` source: a seeded order-k Markov language whose best achievable loss is known.

Documents are strings over `alphabet_size` letters. Each character depends on the previous
`order` characters of its document (a start marker fills in before the first), through
transition rows drawn from a Dirichlet; after the first character a document ends with
`end_probability`. Because the process is known, `best_achievable_loss` computes the Bayes-optimal
cross-entropy of the eval tokens for a model that sees exactly what ours sees (its window's part
of the current document), so demos and tests can check how close training gets to that floor.
"""

from __future__ import annotations

import itertools

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from llmjax.data.tokenizers import BOS_ID, EOS_ID, Tokenizer

_EVAL_STREAM = 1  # rng stream for eval documents (train uses 0)


class MarkovLanguage:
    """The generating process: states are the last `order` symbols (0 = start marker)."""

    def __init__(self, g: ml_collections.ConfigDict):
        self.order, self.alphabet_size = g.order, g.alphabet_size
        self.letters = "abcdefghijklmnopqrstuvwxyz"[: g.alphabet_size]
        self.end_probability = g.end_probability
        rng = np.random.default_rng(g.seed)
        symbols = g.alphabet_size + 1  # 0 = start marker, 1.. = letters
        self.num_states = symbols**g.order
        self.transitions = rng.dirichlet([g.concentration] * g.alphabet_size, self.num_states)
        # successor[s, c]: state after emitting letter c (0-based) from state s.
        states = np.arange(self.num_states)
        self.successor = (states[:, None] * symbols) % self.num_states + \
            (np.arange(g.alphabet_size)[None, :] + 1)

    def end_prob(self, state: np.ndarray | int) -> np.ndarray:
        return np.where(np.asarray(state) == 0, 0.0, self.end_probability)

    def documents(self, count: int, seed: int, stream: int) -> list[str]:
        rng = np.random.default_rng([seed, stream])
        cumulative = np.cumsum(self.transitions, axis=1)
        docs = []
        for _ in range(count):
            state, chars = 0, []
            while True:
                if state != 0 and rng.random() < self.end_probability:
                    break
                c = min(int(np.searchsorted(cumulative[state], rng.random())),
                        self.alphabet_size - 1)
                chars.append(self.letters[c])
                state = self.successor[state, c]
            docs.append("".join(chars))
        return docs


class GeneratedMarkov(tfds.core.GeneratorBasedBuilder):
    """The Markov language's documents as a TFDS dataset (train / validation)."""

    VERSION = tfds.core.Version("1.0.0")
    # tfds looks for builder metadata next to the defining package; say where that is
    # (an editable install hides it from importlib.resources).
    pkg_dir_path = epath.Path(__file__).parent

    def __init__(self, *, generated: ml_collections.ConfigDict, **kwargs):
        self._g = generated
        name = "_".join(f"{k}{generated[k]}" for k in sorted(generated.keys()))
        super().__init__(config=tfds.core.BuilderConfig(name=name.replace(".", "p")), **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(),
                                                 "document": np.int64}),
            disable_shuffling=True)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(self._g.train_documents, 0),
                "validation": self._generate_examples(self._g.eval_documents, _EVAL_STREAM)}

    def _generate_examples(self, count: int, stream: int):
        docs = MarkovLanguage(self._g).documents(count, self._g.seed, stream)
        for i, text in enumerate(docs):
            yield i, {"text": text, "document": i}


def best_achievable_loss(g: ml_collections.ConfigDict, tokenizer: Tokenizer,
                         batches: list[dict[str, np.ndarray]], train_docs: list[str]) -> float:
    """Bayes-optimal mean cross-entropy (nats/token) over the weighted targets of `batches`.

    Within a window the model sees the current document only from the later of its start and
    the window's start. Where the start is visible the state is known; otherwise the belief over
    states starts from their frequency in the training documents and is filtered on each
    observed character (transitions are deterministic given the character).
    """
    lang = MarkovLanguage(g)
    letter_ids = tokenizer.encode_array(lang.letters)
    to_letter = np.full(max(tokenizer.vocab_size, int(letter_ids.max()) + 1), -1)
    to_letter[letter_ids] = np.arange(lang.alphabet_size)
    prior = np.zeros(lang.num_states)
    for doc in train_docs:  # state before each character, as it occurs in the data
        state = 0
        for ch in doc:
            prior[state] += 1
            state = lang.successor[state, lang.letters.index(ch)]
    prior /= prior.sum()
    keep = 1.0 - lang.end_prob(np.arange(lang.num_states))
    emit = lang.transitions * keep[:, None]  # P(letter | state)
    eos = lang.end_prob(np.arange(lang.num_states))
    total, count = 0.0, 0.0
    for batch in batches:
        for inputs, targets, segs, weights in zip(batch["inputs"], batch["targets"],
                                                  batch["segment_ids"], batch["weights"],
                                                  strict=True):
            belief = None
            for tok, tgt, seg, w, prev_seg in zip(inputs, targets, segs, weights,
                                                  itertools.chain([-1], segs), strict=False):
                if seg != prev_seg:  # a segment starts: known start or unknown mid-document
                    belief = None if tok == BOS_ID else prior.copy()
                if tok == BOS_ID:
                    belief = np.zeros(lang.num_states)
                    belief[0] = 1.0
                elif to_letter[tok] >= 0 and belief is not None:
                    c = to_letter[tok]
                    post = belief * emit[:, c]
                    belief = np.bincount(lang.successor[:, c], weights=post,
                                         minlength=lang.num_states)
                    belief /= belief.sum()
                if w > 0:
                    if tgt == EOS_ID:
                        p = float(belief @ eos)
                    else:
                        p = float(belief @ emit[:, to_letter[tgt]])
                    total += -np.log(max(p, 1e-30)) * w
                    count += w
    return total / max(count, 1.0)
