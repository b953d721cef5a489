"""Per-device memory of the compiled train step of a ~1B-parameter decoder under several meshes,
from XLA's memory analysis of the step compiled on abstract shapes (nothing is allocated or run).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/python benchmarks/memory.py

`--optimizer=adafactor` measures Adafactor's factored state instead of AdamW's; `--lora_rank=R`
a LoRA fine-tune (adapters of rank R on `--lora_targets`, the only trained parameters: optimizer
state for them alone, no weight gradients for the rest); `--logits_chunks=N` the causal-LM loss
computed N chunks of the sequence at a time (model.logits_chunks), with `--vocab_size` to see
what the [B, L, V] logits cost; `--dtype=bfloat16` bfloat16 compute; `--meshes=data,fsdp` a
subset of the meshes (`sequence`, `fsdp_sequence`: context parallelism, each example's tokens
split over the sequence axis, for long sequences and fewer rows than devices);
`--attention_impl=blockwise` attention over `--attention_block_size` keys at a time (no
[L, L] scores: model.attention_impl). Prints one JSON
line per mesh: parameters + optimizer state per device (the step's donated state arguments),
temporaries, and the compile time; then the fsdp=8 / data-only ratio of parameter + optimizer
memory (ZeRO-3 divides it by the fsdp size).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
flags.DEFINE_integer("layers", 20, "Decoder layers (20 x 2048: 1.07B parameters).")
flags.DEFINE_integer("emb_dim", 2048, "Model width.")
flags.DEFINE_integer("seq_len", 1024, "Tokens per example.")
flags.DEFINE_integer("batch_size", 16, "Global batch.")
flags.DEFINE_string("remat", "full", "model.remat for the step.")
flags.DEFINE_bool("scan_layers", True, "model.scan_layers (one compiled block: fast compile).")
flags.DEFINE_enum("optimizer", "adamw", ["adamw", "adafactor"], "optimizer.name.")
flags.DEFINE_integer("lora_rank", 0, "lora.rank (0: full training).")
flags.DEFINE_string("lora_targets", "attention|mlp", "lora.targets.")
flags.DEFINE_integer("vocab_size", 32768, "model.vocab_size.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "model.dtype (compute dtype).")
flags.DEFINE_integer("logits_chunks", 1, "model.logits_chunks (1: the whole [B, L, V] logits).")
flags.DEFINE_enum("attention_impl", "einsum", ["einsum", "blockwise"],
                  "model.attention_impl (blockwise: keys a block at a time, no [L, L] scores).")
flags.DEFINE_integer("attention_block_size", 512, "model.attention_block_size.")
flags.DEFINE_list("meshes", ["data", "fsdp", "tensor", "fsdp_tensor"],
                  "Which meshes to compile for: data, fsdp, tensor, fsdp_tensor, "
                  "fsdp2_tensor4, sequence, fsdp_sequence.")
FLAGS = flags.FLAGS

# (data, fsdp, sequence, tensor), as llmjax.sharding.MESH_AXES
MESHES = {"data": ("data-only (8,1,1,1)", (8, 1, 1, 1)), "fsdp": ("fsdp=8 (1,8,1,1)", (1, 8, 1, 1)),
          "tensor": ("tensor=8 (1,1,1,8)", (1, 1, 1, 8)),
          "fsdp_tensor": ("fsdp x tensor (1,4,1,2)", (1, 4, 1, 2)),
          "fsdp2_tensor4": ("fsdp x tensor (1,2,1,4)", (1, 2, 1, 4)),
          "sequence": ("sequence=8 (1,1,8,1)", (1, 1, 8, 1)),
          "fsdp_sequence": ("fsdp x sequence (1,2,4,1)", (1, 2, 4, 1))}


def main(argv):
    del argv
    import jax
    import numpy as np

    from llmjax import configs
    from llmjax.models import lora
    from llmjax.objectives import get_objective
    from llmjax.sharding import MESH_AXES
    from llmjax.train import optim
    from llmjax.train import state as state_lib
    from llmjax.train.parallel import Parallel

    c = configs.base_config()
    c.model.num_layers, c.model.emb_dim = FLAGS.layers, FLAGS.emb_dim
    c.model.num_heads, c.model.mlp_dim = FLAGS.emb_dim // 128, 4 * FLAGS.emb_dim
    c.model.max_len, c.model.vocab_size = FLAGS.seq_len, FLAGS.vocab_size
    c.model.logits_chunks, c.model.dtype = FLAGS.logits_chunks, FLAGS.dtype
    c.model.remat, c.model.scan_layers = FLAGS.remat, FLAGS.scan_layers
    c.model.attention_impl = FLAGS.attention_impl
    c.model.attention_block_size = FLAGS.attention_block_size
    c.seq_len, c.batch_size = FLAGS.seq_len, FLAGS.batch_size
    c.optimizer.name = FLAGS.optimizer
    c.lora.rank, c.lora.targets = FLAGS.lora_rank, FLAGS.lora_targets
    graphdef, params = state_lib.abstract_model(c)
    num_params = state_lib.count_params(params)
    objective = get_objective(c.objective)
    trainable = lora.trainable(objective) if c.lora.rank else None
    tx, schedule = optim.make_optimizer(c.optimizer, c.num_train_steps, trainable=trainable)
    abstract = jax.eval_shape(lambda p: state_lib.init_state(p, tx, 0), params)
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    shape = (c.batch_size, c.seq_len)
    batch = {"inputs": np.int32, "targets": np.int32, "segment_ids": np.int32,
             "weights": np.float32}
    print(json.dumps({"parameters": num_params, "optimizer": c.optimizer.name,
                      "lora_rank": c.lora.rank, "vocab_size": c.model.vocab_size,
                      "logits_chunks": c.model.logits_chunks, "dtype": c.model.dtype,
                      "attention_impl": c.model.attention_impl,
                      "state_gib": round(state_bytes / 2**30, 2),
                      "devices": jax.device_count(), "remat": c.model.remat,
                      "scan_layers": c.model.scan_layers}))
    per_device = {}
    unknown = set(FLAGS.meshes) - set(MESHES)
    if unknown:
        raise app.UsageError(f"--meshes: unknown {sorted(unknown)}; choose from {list(MESHES)}")
    for name, mesh in (MESHES[key] for key in FLAGS.meshes):
        for axis, size in zip(MESH_AXES, mesh, strict=True):
            c.parallel.mesh[axis] = size
        parallel = Parallel("mesh", graphdef, objective, tx, schedule,
                            mesh_sizes=c.parallel.mesh, abstract_state=abstract,
                            trainable=trainable)
        state_in = parallel.abstract_for_restore(abstract)
        batch_in = {k: jax.ShapeDtypeStruct(shape, d, sharding=parallel.batch_sharding)
                    for k, d in batch.items()}
        start = time.perf_counter()
        compiled = parallel._train.lower(state_in, batch_in).compile()
        compile_s = time.perf_counter() - start
        memory = compiled.memory_analysis()
        # the step's arguments: this device's shards of the state, plus its batch rows
        per_device[name] = memory.argument_size_in_bytes
        print(json.dumps({"mesh": name,
                          "state_and_batch_gib": round(memory.argument_size_in_bytes / 2**30, 3),
                          "temp_gib": round(memory.temp_size_in_bytes / 2**30, 3),
                          "output_gib": round(memory.output_size_in_bytes / 2**30, 3),
                          "compile_s": round(compile_s, 1)}))
    if {"data", "fsdp"} <= set(FLAGS.meshes):
        ratio = per_device["data-only (8,1,1,1)"] / per_device["fsdp=8 (1,8,1,1)"]
        print(json.dumps({"state_per_device_data_only_over_fsdp8": round(ratio, 2)}))


if __name__ == "__main__":
    app.run(main)
