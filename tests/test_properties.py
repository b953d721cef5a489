"""Property-based tests (hypothesis): random text through tokenizers, packing and every
text objective, and random configs through validation, never raise anything but the project's
own clear errors (DataError / ConfigError)."""

import numpy as np
from conftest import tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmjax import validation
from llmjax.configs import ConfigError
from llmjax.data.text_builder import DataError
from llmjax.data.tokenizers import train_tokenizer
from llmjax.objectives import get_objective
from llmjax.train import state as state_lib

# Text with what real files hold: empty lines, long lines, any unicode, control characters.
LINE = st.one_of(st.just(""), st.text(max_size=40),
                 st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=400),
                 st.text(alphabet="\t\r\x00\x0b\x0c\u2028 abc", max_size=20))
DOCUMENT = st.lists(LINE, max_size=12).map("\n".join)
QUICK = settings(max_examples=60, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@QUICK
@given(docs=st.lists(DOCUMENT, min_size=1, max_size=4),
       kind=st.sampled_from(["char", "byte", "wordpiece", "bpe"]),
       objective=st.sampled_from(["causal_lm", "mlm", "nsp", "mlm_nsp"]),
       seq_len=st.integers(4, 24))
def test_random_text_gives_examples_or_a_data_error(docs, kind, objective, seq_len):
    c = tiny_config(**{"objective": objective, "seq_len": seq_len, "batch_size": 2,
                       "tokenizer.kind": kind, "tokenizer.vocab_size": 64,
                       "model.arch": "decoder" if objective == "causal_lm" else "encoder"})
    try:
        tok = train_tokenizer(kind, docs, 64)
        c.model.vocab_size = tok.vocab_size
        obj = get_objective(objective)
        examples = obj.make_examples([{"text": d} for d in docs], tok, c, train=True)
        if len(examples) == 0:
            return
        batch = examples[np.arange(min(2, len(examples)))]
        if hasattr(examples, "corrupt"):
            batch = examples.corrupt(batch, np.random.default_rng(0))
    except (DataError, ConfigError) as e:
        assert str(e)  # a message, never an empty error
        return
    for key in ("tokens", "inputs"):
        if key in batch:
            assert batch[key].shape[-1] == seq_len
            assert batch[key].min() >= 0 and batch[key].max() < tok.vocab_size


@QUICK
@given(seq_len=st.integers(-2, 80), batch=st.integers(-1, 20), heads=st.integers(1, 5),
       emb=st.sampled_from([8, 12, 16, 30]), accumulation=st.integers(1, 4),
       schedule=st.sampled_from(["cosine", "linear", "constant", "step"]),
       position=st.sampled_from(["learned", "rotary", "sinusoidal", "alibi"]),
       arch=st.sampled_from(["decoder", "encoder", "transformer"]),
       objective=st.sampled_from(["causal_lm", "mlm", "nsp", "classification", "ctc"]))
def test_random_configs_validate_or_say_why(seq_len, batch, heads, emb, accumulation, schedule,
                                            position, arch, objective):
    c = tiny_config(**{"seq_len": seq_len, "batch_size": batch, "model.num_heads": heads,
                       "model.emb_dim": emb, "optimizer.accumulation_steps": accumulation,
                       "optimizer.schedule": schedule, "model.position_embedding": position,
                       "model.arch": arch, "objective": objective, "model.vocab_size": 20,
                       "model.num_classes": 2, "data.labels": "0,1"})
    try:
        validation.validate(c)
    except ConfigError as e:
        assert str(e)
        return
    state_lib.build_model(c)  # a config that validates builds
