"""Direct preference optimisation (objective=dpo): the reference log-likelihoods are those of
the model the run starts from, the loss starts at ln 2, and training learns a preference."""

import json
import math

import numpy as np
import pytest
from conftest import apply_overrides, tiny_config
from test_convert_hf import llama_folder  # noqa: F401 (a fixture)

import llmjax
from llmjax.configs import ConfigError
from llmjax.data.text_builder import DataError
from llmjax.train.loop import train_and_evaluate
from llmjax.train.writer import read_metrics

PAIRS = [("Two dogs play", "Zwei Hunde spielen", "Two dogs play"),
         ("The quick brown fox", "jumps!", "sleeps."),
         ("A man in an orange hat", "starring at something.", "Ça coûte 3,50 €"),
         ("Ça coûte", "3,50 €", "Zwei")]


def write_pairs(path, pairs):
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n"
                            for p, c, r in pairs))
    return path


def test_dpo_references_the_initial_model_and_starts_at_ln2(llama_folder, tmp_path):  # noqa: F811
    """From a Hugging Face LLaMA: each completion's reference log-likelihood is transformers'
    (after `<s> prompt </s>`, the completion and </s>), and the first step's loss is ln 2 with
    zero rewards, the policy being the reference."""
    torch = pytest.importorskip("torch")

    from llmjax.convert.hf import apply_hf_model_config
    from llmjax.data.hf_tokenizer import load_hf_tokenizer
    from llmjax.objectives.dpo import DirectPreference
    from llmjax.train.start import resolve_vocab

    folder, hf_model = llama_folder
    data = write_pairs(tmp_path / "pairs.jsonl", PAIRS)
    c = tiny_config(**{"init.hf_path": str(folder), "objective": "dpo",
                       "data.source": f"jsonl:{data}", "data.validation_fraction": 0.0,
                       "data.eval_source": f"jsonl:{data}", "data.eval_split": "train",
                       "seq_len": 24, "target_seq_len": 24, "batch_size": 4,
                       "num_train_steps": 1, "log_every_steps": 1, "eval_every_steps": 1})
    apply_hf_model_config(c)
    tok = load_hf_tokenizer(folder)
    resolve_vocab(c, tok.vocab_size)
    objective = DirectPreference()
    records = [{"prompt": p, "chosen": ch, "rejected": r} for p, ch, r in PAIRS]
    examples = objective.make_examples(records, tok, c, train=True)
    expected = []
    for prompt, *completions in PAIRS:
        head = [tok.bos_id, *tok.encode(prompt), tok.eos_id]
        row = []
        for completion in completions:
            tail = [*tok.encode(completion), tok.eos_id]
            with torch.no_grad():
                logits = hf_model(torch.tensor([head + tail])).logits[0, len(head) - 1: -1]
            row.append(-torch.nn.functional.cross_entropy(logits, torch.tensor(tail),
                                                          reduction="sum").item())
        expected.append(row)
    np.testing.assert_allclose(examples.arrays["reference_logps"], expected, atol=2e-4)
    assert examples.arrays["inputs"].shape == (4, 2, 48)

    train_and_evaluate(c, tmp_path / "dpo")
    first = next(r for r in read_metrics(tmp_path / "dpo") if "train/loss" in r)
    assert first["train/loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["train/reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert llmjax.load(tmp_path / "dpo").answers_prompts


def preference_setup(tmp_path, **overrides):
    """(config, held-out pairs): DPO from a barely trained decoder on pairs whose chosen
    completions are letters of the first half of the alphabet and rejected ones of the second."""
    train_and_evaluate(tiny_config(num_train_steps=1), tmp_path / "init")
    rng = np.random.default_rng(0)

    def pairs(n):
        def text(alphabet):
            return "".join(rng.choice(list(alphabet), rng.integers(3, 7)))

        return [(text("abcdefghijkl"), text("abcdef"), text("ghijkl")) for _ in range(n)]

    train = write_pairs(tmp_path / "train.jsonl", pairs(400))
    held_out = pairs(40)
    dev = write_pairs(tmp_path / "dev.jsonl", held_out)
    return tiny_config(**{"init.workdir": str(tmp_path / "init"), "objective": "dpo",
                          "data.source": f"jsonl:{train}", "data.eval_source": f"jsonl:{dev}",
                          "data.validation_fraction": 0.0, "seq_len": 10, "target_seq_len": 10,
                          "batch_size": 16, **overrides}), held_out


def test_dpo_learns_a_preference(tmp_path):
    """Held-out pairs (new prompts and completions) rank the chosen above the rejected (reward
    accuracy ≥ 0.9, where the rewards tie at step 0), and so do the trained model's
    likelihoods (Run.log_likelihood)."""
    c, held_out = preference_setup(tmp_path, num_train_steps=60, eval_every_steps=60,
                                   checkpoint_best_metric="reward_accuracy")
    metrics = train_and_evaluate(c, tmp_path / "dpo")
    assert metrics["eval/reward_accuracy"] >= 0.9, metrics
    assert metrics["eval/chosen_reward"] > 0 > metrics["eval/rejected_reward"]
    assert "eval/perplexity" not in metrics  # not a cross-entropy
    run = llmjax.load(tmp_path / "dpo")
    prompts = [p for p, _, _ in held_out]
    chosen = run.log_likelihood(prompts, [c for _, c, _ in held_out])
    rejected = run.log_likelihood(prompts, [r for _, _, r in held_out])
    assert np.mean(chosen > rejected) >= 0.9


# slow: the default suite's time budget; the mesh's reference is checked by default below
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mesh", "pmap"])
def test_dpo_gives_one_devices_metrics_under_pmap_and_a_mesh(tmp_path, mode):
    """The pair axis rides along the batch axis: a (1, 2, 2, 2) mesh (and 8-way pmap, slow: it
    has no DPO-specific code) train and evaluate as one device does."""
    c, _ = preference_setup(tmp_path, num_train_steps=5, eval_every_steps=5)
    single = train_and_evaluate(c, tmp_path / "single")
    mesh = ({"parallel.mesh.fsdp": 2, "parallel.mesh.sequence": 2, "parallel.mesh.tensor": 2}
            if mode == "mesh" else {})
    other_config = apply_overrides(c.copy_and_resolve_references(),
                                   {"parallel.mode": mode, **mesh})
    other = train_and_evaluate(other_config, tmp_path / mode)
    assert other.keys() == single.keys()
    for name, value in single.items():
        assert other[name] == pytest.approx(value, abs=1e-5), (mode, name)


def test_a_mesh_run_shards_its_reference_and_scores_as_one_device(tmp_path):
    """parallel.mode=mesh: the reference model's parameters are split over the (1, 2, 4)
    mesh as the policy's are, and its log-likelihoods equal one device's."""
    from llmjax.objectives.dpo import DirectPreference
    from llmjax.objectives.reference import ReferenceModel

    c, _ = preference_setup(tmp_path)
    records = [{"prompt": p, "chosen": ch, "rejected": r} for p, ch, r in PAIRS]
    tokenizer = llmjax.load(tmp_path / "init").tokenizer
    scores = {}
    for mode in ("single", "mesh"):
        config = apply_overrides(c.copy_and_resolve_references(),
                                 {"parallel.mode": mode, "parallel.mesh.fsdp": 2,
                                  "parallel.mesh.tensor": 4, "batch_size": 2})
        config.model.vocab_size = tokenizer.vocab_size
        objective = DirectPreference()
        objective.resolve_config(config)
        examples = objective.make_examples(records, tokenizer, config, train=False)
        scores[mode] = examples[np.arange(len(records))]["reference_logps"]
        assert ReferenceModel.is_sharded(objective._reference.params) == (mode == "mesh")
    assert np.isfinite(scores["single"]).all() and scores["single"].shape == (4, 2)
    np.testing.assert_allclose(scores["mesh"], scores["single"], atol=1e-5)


@pytest.mark.parametrize("loss,smoothing", [("sigmoid", 0.0), ("sigmoid", 0.2), ("hinge", 0.0),
                                            ("ipo", 0.0)])
def test_dpo_loss_variants_follow_their_formulas(monkeypatch, loss, smoothing):
    """DPO (and conservative DPO), SLiC's hinge and IPO on pairs of known log-likelihoods."""
    import jax.numpy as jnp

    from llmjax.objectives import dpo

    policy = np.array([[-3.0, -5.0], [-4.0, -2.0], [-1.0, -1.5]])  # [pairs, (chosen, rejected)]
    reference = np.array([[-3.5, -4.0], [-4.5, -2.5], [-2.0, -1.0]])
    monkeypatch.setattr(dpo, "completion_logps",
                        lambda model, rows, rng=None: jnp.asarray(policy.reshape(-1)))
    objective = dpo.DirectPreference()
    objective.resolve_config(tiny_config(**{"dpo.beta": 0.5, "dpo.loss": loss,
                                            "dpo.label_smoothing": smoothing}))
    shape = (3, 2, 4)
    batch = {k: jnp.zeros(shape, jnp.int32) for k in ("inputs", "targets", "segment_ids")}
    batch.update(weights=jnp.zeros(shape), reference_logps=jnp.asarray(reference),
                 pair_weights=jnp.asarray([1.0, 1.0, 0.0]))  # the third pair is padding
    sums = objective.loss(None, batch, None)
    z = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])

    def log_sigmoid(x):
        return -np.log1p(np.exp(-x))

    expected = {"sigmoid": -(1 - smoothing) * log_sigmoid(0.5 * z)
                - smoothing * log_sigmoid(-0.5 * z),
                "hinge": np.maximum(0.0, 1 - 0.5 * z), "ipo": (z - 1 / (2 * 0.5)) ** 2}[loss]
    total, count = sums["loss"]
    assert float(count) == 2.0
    np.testing.assert_allclose(float(total), expected[:2].sum(), rtol=1e-6)
    np.testing.assert_allclose(float(sums["reward_margin"][0]), 0.5 * z[:2].sum(), rtol=1e-6)
    assert float(sums["reward_accuracy"][0]) == float((z[:2] > 0).sum())


@pytest.mark.parametrize("overrides,message", [
    ({}, "set init.hf_path or init.workdir"),
    ({"init.workdir": "x", "label_smoothing": 0.1}, "objective=dpo's loss is on likelihood"),
    ({"init.workdir": "x", "dpo.beta": 0.0}, "dpo.beta=0.0 must be"),
    ({"init.workdir": "x", "model.arch": "encoder"}, "does not fit model.arch='encoder'"),
    ({"init.workdir": "x", "dpo.loss": "kto"}, "dpo.loss='kto': use sigmoid"),
    ({"init.workdir": "x", "dpo.loss": "ipo", "dpo.label_smoothing": 0.1},
     "for dpo.loss=sigmoid only"),
])
def test_dpo_config_errors(overrides, message):
    from llmjax import validation

    with pytest.raises(ConfigError, match=message):
        validation.validate(tiny_config(**{"objective": "dpo", **overrides}))


def test_conversational_pairs_are_laid_out_by_the_chat_template(tmp_path):
    """UltraFeedback's layout (chosen / rejected as [user, assistant] messages) and TRL's
    conversational one (a prompt of messages, lone answers) give the prompt
    apply_chat_template(add_generation_prompt) gives, and each answer as the rest of the whole
    exchange's ids; conversations without the template are an error naming the fix."""
    from test_chat import CHATML, chat_config, chat_folder

    from llmjax.data.tokenizers import ByteTokenizer
    from llmjax.objectives.dpo import pair_ids

    ours, theirs = chat_folder(tmp_path / "chatml", CHATML,
                               ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"])
    system = {"role": "system", "content": "Be brief."}
    user = {"role": "user", "content": "Two dogs play"}
    good = {"role": "assistant", "content": "Zwei Hunde spielen"}
    bad = {"role": "assistant", "content": "Ça coûte 3,50 €"}
    records = [{"prompt": "Two dogs play", "chosen": json.dumps([user, good]),
                "rejected": json.dumps([user, bad])},
               {"prompt": json.dumps([system, user]), "chosen": json.dumps([good]),
                "rejected": json.dumps([bad])}]
    config = chat_config(**{"objective": "dpo", "data.messages_column": None,
                            "init.workdir": "x", "seq_len": 64, "target_seq_len": 64})
    prompts, chosen, rejected = pair_ids(records, config, ours)
    for context, prompt, answers in ((
            [user], prompts[0], (chosen[0], rejected[0])), ([system, user], prompts[1],
                                                           (chosen[1], rejected[1]))):
        head = list(theirs.apply_chat_template(context, add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"])
        assert prompt.tolist() == head
        for answer, message in zip(answers, (good, bad), strict=True):
            whole = theirs.apply_chat_template(context + [message], tokenize=True,
                                               return_dict=True)["input_ids"]
            assert head + answer.tolist() == list(whole)
    plain = chat_config(**{"objective": "dpo", "data.messages_column": None,
                           "data.chat_template": False, "init.workdir": "x"})
    with pytest.raises(DataError, match="record 0: chosen and rejected are conversations"):
        pair_ids(records, plain, ByteTokenizer())
