"""Test setup: 8 fake CPU devices (set before jax is imported), faster-compiling XLA flags, a
private TFDS data dir, a session-wide JAX compilation cache, and tiny configs."""

import functools
import os

# The tests compile far more than they run: LLVM at -O1 instead of XLA's default -O2 compiled
# the tiny train step ~30% faster at the same step time (measured; the Shakespeare recipe's step
# gained nothing, so it is not a user default), and -O0 took the model, mixture, FLOP and
# speculative-decoding tests from 109 to 86 s (session 27) with the training-heavy files
# (train, seq2seq, reliability) unchanged at 103 / 102 s. Subprocesses get these flags too.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {TEST_XLA_FLAGS}"
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole session (subprocesses inherit it): many tests
# compile the same tiny models, and compiling dominates their time on CPU.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="llmjax-test-jax-cache-")
    # removed when the process that made it (pytest's, or xdist's controller) exits: each
    # run left ~50 MB behind otherwise
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _tfds_data_dir(tmp_path_factory):
    os.environ["TFDS_DATA_DIR"] = str(tmp_path_factory.mktemp("tfds"))


def tiny_config(**overrides):
    """A seconds-long causal-LM run on a small `generated` corpus; overrides as 'a.b': v."""
    from llmjax import configs

    c = configs.base_config()
    c.model.num_layers, c.model.num_heads, c.model.emb_dim = 2, 2, 32
    c.model.mlp_dim, c.model.max_len = 64, 64
    c.seq_len, c.batch_size = 32, 8
    c.num_train_steps, c.log_every_steps = 20, 5
    c.eval_every_steps = c.checkpoint_every_steps = 10
    c.optimizer.warmup_steps, c.optimizer.learning_rate = 5, 3e-3
    c.data.generated.train_documents, c.data.generated.eval_documents = 300, 20
    c.progress_bar = False
    c.async_checkpointing = False
    c.peak_flops_per_device = 1e12
    return apply_overrides(c, overrides)


def optimised(config):
    """`config` with its train and eval steps compiled at LLVM -O2, XLA's default, instead of
    the suite's -O0 (with parallel.compiler_options=auto's choice of dots kept): for runs of
    hundreds of steps, whose step time outweighs the longer compile (session 27:
    test_short_run_approaches_the_generated_loss_floor's 400 steps, 18 -> 12 s)."""
    from llmjax import configs

    options = {**configs.resolve_compiler_options(config, "auto"),
               "xla_backend_optimization_level": 2}
    config.parallel.compiler_options = ",".join(f"{k}={v}" for k, v in options.items())
    return config


def jitted(model, method: str = "__call__"):
    """`model.<method>` as one jitted function of its (array or None) arguments. Called
    eagerly, a model compiles every op on its own for every new input shape (a decoder test
    took 35 s that way); the training and decoding code runs jitted anyway."""
    from flax import nnx

    graphdef, state = nnx.split(model)
    return lambda *args, **kwargs: _method_caller()(graphdef, method, state, args, kwargs)


def decode_in_steps(decode, tokens_BxT, cache, first: int):
    """Logits [B, T, V] of `decode(tokens, cache) -> (logits, cache)` fed the first `first`
    tokens at once, then one at a time (what a KV cache must reproduce of the full forward)."""
    import jax.numpy as jnp

    logits, cache = decode(tokens_BxT[:, :first], cache)
    steps = [logits]
    for t in range(first, tokens_BxT.shape[1]):
        logits, cache = decode(tokens_BxT[:, t:t + 1], cache)
        steps.append(logits)
    return jnp.concatenate(steps, axis=1)


@functools.cache
def _method_caller():
    import jax
    from flax import nnx

    def call(graphdef, method, state, args, kwargs):
        return getattr(nnx.merge(graphdef, state), method)(*args, **kwargs)

    return jax.jit(call, static_argnums=(0, 1))


def write_config_file(config, path: pathlib.Path) -> pathlib.Path:
    """A config file at `path` whose get_config() returns `config` (for `llmjax` subprocesses)."""
    from llmjax import configs

    path.write_text("from llmjax import configs\n\ndef get_config():\n"
                    f"    return configs.from_json({configs.to_json(config)!r})\n")
    return path


def apply_overrides(c, overrides: dict):
    """`c` with {'a.b': value} overrides set in place."""
    for key, value in overrides.items():
        node = c
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return c


def shared_file(*parts: str) -> pathlib.Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test reads ../shared/data, which only the "
                    "project's own checkouts have")
    return path


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups from the markers
def pytest_collection_modifyitems(items):
    """Under `--dist loadgroup`, the tests that share a module-scoped fixture (a trained run, a
    converted checkpoint) go to one worker, so the fixture is built once instead of once per
    worker (measured: test_cli's trained run was built twice, 12 s and 9 s).

    Those groups are the suite's longest units of work (test_seq2seq's reversal run and its
    tests: 50 s), and xdist hands units out in collection order: scheduled first, the short
    tests fill in around them instead of one worker finishing a late group alone."""
    grouped = set()
    for item in items:
        fixtures = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        shared = sorted(name for name, defs in fixtures.items() if defs[-1].scope == "module")
        if shared:
            item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}.{'+'.join(shared)}"))
            grouped.add(item.nodeid)
    items.sort(key=lambda item: item.nodeid not in grouped)  # stable: grouped units first


def run_command(command: str, workdir, capsys, **flags) -> dict:
    """The JSON that `llmjax COMMAND --workdir=WORKDIR --name=value ...` prints, run in this
    process (commands.COMMAND with the workdir's config as the CLI loads it): seconds faster
    than a subprocess. test_cli.py runs the CLI itself."""
    import json
    import types

    from llmjax import commands, workdir_config

    values = {"workdir": str(workdir), "step": None, "split": None, "text": None,
              "text_pair": None, "prompt": None, "messages": None, "max_new_tokens": None,
              "temperature": None, "top_k": None, "top_p": None, "min_p": None,
              "repetition_penalty": None, "seed": None,
              "beam_size": None, "config": workdir_config.get_config(str(workdir))}
    capsys.readouterr()  # what was printed before
    getattr(commands, command)(types.SimpleNamespace(**{**values, **flags}))
    printed = capsys.readouterr().out
    return json.loads(printed[printed.index("{"):])
