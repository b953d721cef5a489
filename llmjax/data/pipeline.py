"""From config to batches: the tokenizer, the training iterator (grain, checkpointable) and
the eval batches.

Each host reads only its shard, tokenizes it, lets the objective make examples, and batches
`batch_size / process_count` of them per step. The same seed gives the same batches.
"""

from __future__ import annotations

import dataclasses

import grain
import jax
import ml_collections
import numpy as np
from etils import epath

from llmjax.data import mixture, sources
from llmjax.data.text_builder import DataError
from llmjax.data.tokenizers import Tokenizer, load_tokenizer, train_tokenizer
from llmjax.objectives import Objective
from llmjax.objectives.base import Examples

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class HostShard:
    index: int = 0
    count: int = 1

    @classmethod
    def current(cls) -> HostShard:
        return cls(jax.process_index(), jax.process_count())


def eval_source_and_split(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """Where evaluation reads from: `data.eval_source` (default: the train source) and
    `data.eval_split` (default 'validation'; a separate text:/tsv:/jsonl:/parquet:/parallel:
    eval source is read whole, as tfds's 'all' split; so is a mixture of them). Splits take tfds
    syntax:
    'train[:10%]', 'train+validation', 'all'."""
    source = config.data.eval_source or config.data.source
    return source, eval_split_of(source, config)


def eval_split_of(source: str, config: ml_collections.ConfigDict) -> str:
    """The split evaluation reads of `source`: `data.eval_split`, else 'all' for local files
    none of which the training source (or its mixture) reads, else 'validation' (a training
    file's held-out end)."""
    if config.data.eval_split is not None:
        return config.data.eval_split
    local = ("text", "tsv", "jsonl", "parquet", "parallel")
    trained_on = {member for member, _ in mixture.members(config.data.source)}
    members = [member for member, _ in mixture.members(source)]
    separate_files = (all(m.split(":")[0] in local for m in members)
                      and not trained_on.intersection(members))
    return "all" if separate_files else "validation"


def extra_eval_sets(config: ml_collections.ConfigDict) -> list[tuple[str, str, str]]:
    """[(name, source, split)] of `data.extra_eval_sources`, reported as eval_NAME/<metric>."""
    from llmjax.configs import named_sources

    return [(name, source, eval_split_of(source, config))
            for name, source in named_sources(config.data.extra_eval_sources)]


def get_tokenizer(config: ml_collections.ConfigDict, workdir: str | None) -> tuple[Tokenizer, str]:
    """(tokenizer, where it came from): the run's own saved one, else the fine-tuning source's,
    else the distillation teacher's, else `tokenizer.path`, else a new one trained on the
    start of the training split."""
    candidates = []
    if workdir:
        candidates.append(epath.Path(workdir) / "tokenizer")
    if config.init.workdir:
        candidates.append(epath.Path(config.init.workdir) / "tokenizer")
    for directory in candidates:
        if (directory / "tokenizer_config.json").exists():
            return load_tokenizer(directory), str(directory)
    if config.init.workdir:
        raise FileNotFoundError(f"init.workdir={config.init.workdir} has no tokenizer/ directory;"
                                " point it at the workdir of a finished llmjax run")
    if config.init.hf_path:
        from llmjax.data.hf_tokenizer import load_hf_tokenizer

        return (load_hf_tokenizer(config.init.hf_path, config.tokenizer.lowercase),
                config.init.hf_path)
    if config.distill.teacher_workdir:
        from llmjax.train.teacher import teacher_tokenizer

        return teacher_tokenizer(config), f"the teacher's, {config.distill.teacher_workdir}"
    if config.tokenizer.path:
        return (load_tokenizer(config.tokenizer.path, config.tokenizer.lowercase),
                config.tokenizer.path)
    if config.tokenizer.kind == "byte":  # nothing to learn
        return train_tokenizer("byte", [], 0, config.tokenizer.lowercase), "bytes"
    from llmjax.objectives import get_objective

    texts_of = getattr(get_objective(config.objective), "tokenizer_texts", None)
    members = mixture.members(config.data.source)
    total_weight = sum(weight for _, weight in members)
    sample = []
    for member, weight in members:  # a mixture's members in proportion to their weights
        records = sources.open_split(member, config.data.train_split, config)
        limit = max(1, round(config.data.tokenizer_sample_chars * weight / total_weight))
        if texts_of is not None:  # e.g. seq2seq: both sides share one vocabulary
            sample += texts_of(records, config, limit)
        else:
            sample += sources.read_documents(records, config.data.text_column, limit_chars=limit)
    tokenizer = train_tokenizer(config.tokenizer.kind, sample, config.tokenizer.vocab_size,
                                config.tokenizer.lowercase)
    return tokenizer, f"trained on {sum(map(len, sample)):,} characters of {config.data.source}"


def load_examples(config: ml_collections.ConfigDict, tokenizer: Tokenizer, objective: Objective,
                  source: str, split: str, *, train: bool, shard: HostShard) -> Examples:
    """This host's examples of `split`."""
    records = sources.open_split(source, split, config)
    (r_index, r_count), (w_index, w_count) = sources.shard_plan(len(records), shard.index,
                                                                shard.count)
    mine = sources.shard_records(records, r_index, r_count)
    examples = objective.make_examples(mine, tokenizer, config, train=train)
    return examples.shard(w_index, w_count) if w_count > 1 else examples


def train_dataset(config: ml_collections.ConfigDict, tokenizer: Tokenizer, objective: Objective,
                  shard: HostShard | None = None) -> grain.IterDataset:
    """Endless, reshuffled-each-epoch batches of `batch_size / process_count` examples.

    The data is cut into `data.shards` shards (default: one per host), each with its own
    shuffled stream of `batch_size / data.shards` examples per step; a host reads only the
    shards it owns and joins their rows. A global batch is therefore the same however many
    hosts share the shards: `data.shards=N` on one host reproduces a run on N hosts."""
    shard = shard or HostShard.current()
    num_shards = config.data.shards or shard.count
    per_shard = config.batch_size // num_shards
    owned = range(shard.index * num_shards // shard.count,
                  (shard.index + 1) * num_shards // shard.count)
    parts = [_shard_batches(config, tokenizer, objective, HostShard(v, num_shards), per_shard)
             for v in owned]
    ds = parts[0]
    if len(parts) > 1:
        ds = grain.MapDataset.range(len(parts[0])).map(
            lambda i: {k: np.concatenate([p[i][k] for p in parts]) for k in parts[0][i]})
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                                prefetch_buffer_size=config.data.prefetch_batches))


def _shard_batches(config: ml_collections.ConfigDict, tokenizer: Tokenizer,
                   objective: Objective, shard: HostShard, batch_size: int) -> grain.MapDataset:
    """Endless batches of one data shard (random access: batch i is a pure function of i)."""
    members = mixture.members(config.data.source)
    if len(members) > 1:
        return _mixed_shard_batches(config, tokenizer, objective, shard, batch_size, members)
    examples = load_examples(config, tokenizer, objective, members[0][0],
                             config.data.train_split, train=True, shard=shard)
    n = len(examples)
    if n < batch_size:
        raise DataError(f"the training split gives {n} examples of seq_len={config.seq_len} in "
                         f"data shard {shard.index} of {shard.count}, fewer than one batch of "
                         f"{batch_size}: use more data, a smaller batch_size or a smaller seq_len")
    ds = (grain.MapDataset.range(n).shuffle(seed=config.seed).repeat(None)
          .batch(batch_size, drop_remainder=True).map(examples.__getitem__))
    if hasattr(examples, "corrupt"):  # e.g. MLM masking: fresh for every batch of every epoch
        ds = ds.random_map(examples.corrupt, seed=config.seed + shard.index)
    return ds


def _mixed_shard_batches(config: ml_collections.ConfigDict, tokenizer: Tokenizer,
                         objective: Objective, shard: HostShard, batch_size: int,
                         members: list[tuple[str, float]]) -> grain.MapDataset:
    """One data shard's batches of a mixture: each member's examples of this shard, interleaved
    by weight (mixture.mixed_batches)."""
    parts = []
    for member, _ in members:
        examples = load_examples(config, tokenizer, objective, member, config.data.train_split,
                                 train=True, shard=shard)
        if len(examples) == 0:
            raise DataError(f"mixture member {member!r} gives no training examples of seq_len="
                            f"{config.seq_len} in data shard {shard.index} of {shard.count}: "
                            "give it more data, or drop it from data.source")
        parts.append(examples)
    return mixture.mixed_batches(parts, [weight for _, weight in members], batch_size,
                                 config.seed, config.seed + shard.index)


def eval_batches(config: ml_collections.ConfigDict, tokenizer: Tokenizer, objective: Objective,
                 source: str | None = None, split: str | None = None,
                 shard: HostShard | None = None) -> list[Batch]:
    """Every eval example once, in per-host batches; the last batch is filled with weight-0
    examples. All hosts get the same number of batches. A mixture's members are evaluated one
    after the other (each its own batches, `eval_steps` of each at most): every eval token of
    every member once."""
    shard = shard or HostShard.current()
    default_source, default_split = eval_source_and_split(config)
    members = mixture.members(source or default_source)
    return [batch for member, _ in members
            for batch in _member_eval_batches(config, tokenizer, objective, member,
                                              split or default_split, shard)]


def _member_eval_batches(config: ml_collections.ConfigDict, tokenizer: Tokenizer,
                         objective: Objective, source: str, split: str,
                         shard: HostShard) -> list[Batch]:
    examples = load_examples(config, tokenizer, objective, source, split, train=False,
                             shard=shard)
    per_host = config.batch_size // shard.count
    n = len(examples)
    num_batches = -(-n // per_host)
    if shard.count > 1:
        from jax.experimental import multihost_utils

        num_batches = int(np.max(multihost_utils.process_allgather(np.int32(num_batches))))
    if config.eval_steps:
        num_batches = min(num_batches, config.eval_steps)
    pad = (examples.padding_example() if hasattr(examples, "padding_example")
           else objective.padding_example(config.seq_len))
    batches = []
    for i in range(num_batches):
        indices = np.arange(i * per_host, min((i + 1) * per_host, n))
        batch = examples[indices] if len(indices) else {
            k: np.zeros((0, *v.shape), v.dtype) for k, v in pad.items()}
        missing = per_host - len(indices)
        if missing:
            batch = {k: np.concatenate([v, np.repeat(pad[k][None], missing, axis=0)])
                     for k, v in batch.items()}
        if hasattr(examples, "corrupt"):  # fixed per batch, so evals are comparable
            batch = examples.corrupt(batch, np.random.default_rng([config.seed, shard.index, i]))
        batches.append(batch)
    return batches
