"""llmjax: encoder, decoder and encoder-decoder Transformer LMs in JAX / Flax NNX.

    run = llmjax.load("runs/demo")          # config, tokenizer, model of a trained run
    run.generate("ab", max_new_tokens=20)
    llmjax.train_and_evaluate(config, workdir)
"""

__version__ = "0.1.0"


def load(path, step=None, config=None):
    """A trained run from its workdir (see llmjax.api.load)."""
    from llmjax.api import load as _load

    return _load(path, step, config)


def train_and_evaluate(config, workdir, **kwargs):
    """Train per `config` in `workdir` (see llmjax.train.loop.train_and_evaluate)."""
    from llmjax.train.loop import train_and_evaluate as _train

    return _train(config, workdir, **kwargs)
