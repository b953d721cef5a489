"""What a language model's loss costs beside its matmuls: the pieces of the cross-entropy and
token accuracy on float32 logits [N, V], each jitted and timed alone on this machine.

    .venv/bin/python benchmarks/loss_kernels.py [--tokens=4096] [--vocab_size=50304]
        [--repeats=5] [--compiler_options=auto]

The default shape is gpt:small's step at GPT-2's vocabulary (16 x 256 tokens). Prints one
JSON line per piece with its median time in ms: the max and the argmax of each row, the
logsumexp, the cross-entropy's value and gradient (llmjax.objectives.base.cross_entropy), and
that with the token-accuracy hit count (argmax == target), as the causal-LM loss computes
them. `--compiler_options=auto` compiles with what a float32 run uses
(`parallel.compiler_options=auto`); '' with XLA's defaults.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
flags.DEFINE_integer("tokens", 4096, "Rows of logits (batch x sequence).")
flags.DEFINE_integer("vocab_size", 50304, "Columns of logits.")
flags.DEFINE_integer("repeats", 5, "Timed calls per piece (the median is printed).")
flags.DEFINE_string("compiler_options", "auto", "parallel.compiler_options for the pieces.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import synthetic
    from llmjax import configs
    from llmjax.objectives.base import cross_entropy

    config = configs.base_config()  # float32 compute, as the logits are
    options = configs.resolve_compiler_options(config, FLAGS.compiler_options)
    rs = np.random.RandomState(0)
    logits = jnp.asarray(rs.randn(FLAGS.tokens, FLAGS.vocab_size).astype(np.float32))
    targets = jnp.asarray(rs.randint(0, FLAGS.vocab_size, FLAGS.tokens), jnp.int32)

    def loss(logits, targets):
        return cross_entropy(logits, targets).sum()

    grad = jax.value_and_grad(loss)
    pieces = {
        "max": lambda x, t: x.max(-1),
        "argmax": lambda x, t: x.argmax(-1),
        "logsumexp": lambda x, t: jax.nn.logsumexp(x, -1),
        "cross_entropy_value_and_grad": grad,
        "cross_entropy_value_and_grad_and_hits": lambda x, t: (grad(x, t),
                                                               (x.argmax(-1) == t).sum()),
    }
    for name, piece in pieces.items():
        compiled = jax.jit(piece, compiler_options=options)
        run = lambda: jax.block_until_ready(compiled(logits, targets))  # noqa: B023, E731
        run()  # compile
        seconds = synthetic.median_seconds(run, FLAGS.repeats)
        print(json.dumps({"piece": name, "shape": [FLAGS.tokens, FLAGS.vocab_size],
                          "ms": round(seconds * 1e3, 1)}))


if __name__ == "__main__":
    app.run(main)
