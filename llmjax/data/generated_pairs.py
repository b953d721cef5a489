"""The `generated:TASK` sources: source -> target string pairs made by a known rule, so an
encoder-decoder can be checked for exact transduction offline. TASK is `reverse` (the source
backwards), `sort` (its letters in order) or `copy`. Sources are random strings of 1 to
`data.generated.max_pair_length` letters from the first `alphabet_size` letters; the splits hold
`train_documents` and `eval_documents` pairs (records {'source', 'target'})."""

from __future__ import annotations

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from llmjax.data.text_builder import DataError

TASKS = {
    "reverse": lambda s: s[::-1],
    "sort": lambda s: "".join(sorted(s)),
    "copy": lambda s: s,
}


def make_pairs(task: str, g: ml_collections.ConfigDict, count: int, stream: int
               ) -> list[tuple[str, str]]:
    rng = np.random.default_rng([g.seed, stream])
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"[: g.alphabet_size]))
    pairs = []
    for _ in range(count):
        source = "".join(rng.choice(letters, rng.integers(1, g.max_pair_length + 1)))
        pairs.append((source, TASKS[task](source)))
    return pairs


class GeneratedPairs(tfds.core.GeneratorBasedBuilder):
    """A generated transduction task as a TFDS dataset (train / validation)."""

    VERSION = tfds.core.Version("1.0.0")
    pkg_dir_path = epath.Path(__file__).parent  # see generated.GeneratedMarkov

    def __init__(self, *, task: str, generated: ml_collections.ConfigDict, **kwargs):
        if task not in TASKS:
            raise DataError(f"data source 'generated:{task}': use generated (Markov text) or "
                            f"generated:{'|'.join(TASKS)} (source/target pairs)")
        self._task, self._g = task, generated
        name = task + "_" + "_".join(f"{k}{generated[k]}" for k in sorted(generated.keys()))
        super().__init__(config=tfds.core.BuilderConfig(name=name.replace(".", "p")), **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"source": tfds.features.Text(),
                                                 "target": tfds.features.Text()}),
            disable_shuffling=True)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(self._g.train_documents, 0),
                "validation": self._generate_examples(self._g.eval_documents, 1)}

    def _generate_examples(self, count: int, stream: int):
        for i, (source, target) in enumerate(make_pairs(self._task, self._g, count, stream)):
            yield i, {"source": source, "target": target}
