"""Data mixtures (`data.source=A=3,B=1`): parsing, batches in proportion, resumable iterators,
evaluation and tokenizers over every member, per-member NSP pairs, and a run end to end."""

import json

import numpy as np
import pytest
from conftest import tiny_config

from llmjax import configs, validation
from llmjax.data import mixture, pipeline, sources
from llmjax.data.text_builder import DataError
from llmjax.objectives import get_objective
from llmjax.train.loop import train_and_evaluate

ABC, XYZ = "abc", "xyz"


def _letters_file(path, letters, lines, seed):
    rng = np.random.default_rng(seed)
    path.write_text("\n".join("".join(rng.choice(list(letters), 60)) for _ in range(lines)))
    return path


@pytest.fixture()
def two_files(tmp_path):
    """Two text sources with disjoint alphabets, so every example tells which member it is."""
    return (_letters_file(tmp_path / "a.txt", ABC, 200, 0),
            _letters_file(tmp_path / "b.txt", XYZ, 20, 1))


def test_mixture_specs_parse_and_bad_ones_are_config_errors():
    assert mixture.members("text:a.txt=3,tfds:glue/sst2:2.0.0") == [
        ("text:a.txt", 3.0), ("tfds:glue/sst2:2.0.0", 1.0)]
    assert mixture.members("generated") == [("generated", 1.0)]
    assert mixture.members("text:runs/x=y/a.txt=0.5") == [("text:runs/x=y/a.txt", 0.5)]
    for spec, message in [("text:a=3,text:b=0", "weight of 'text:b' is 0"),
                          ("text:a=-1,text:b", "weight of 'text:a' is -1"),
                          ("text:a=nan,text:b", "weight of 'text:a' is nan"),
                          ("text:a,,text:b", "empty member"),
                          ("text:a=1,text:a=2", "lists 'text:a' twice")]:
        with pytest.raises(configs.ConfigError, match=message):
            validation.validate(tiny_config(**{"data.source": spec}))
    with pytest.raises(configs.ConfigError, match="empty member"):
        validation.validate(tiny_config(**{"data.eval_source": "text:a,"}))


def test_batches_hold_the_members_in_proportion_and_resume_exactly(two_files):
    a, b = two_files
    c = tiny_config(**{"data.source": f"text:{a}=3,text:{b}", "data.train_window_stride": 0})
    tok, _ = pipeline.get_tokenizer(c, None)
    # the tokenizer's sample takes each member's share: both alphabets are in the vocabulary
    assert tok.decode(tok.encode(ABC + XYZ)) == ABC + XYZ
    obj = get_objective("causal_lm")
    xyz = np.array(tok.encode(XYZ))

    def from_b(batch):
        return np.isin(batch["inputs"], xyz).any(axis=1)

    it = iter(pipeline.train_dataset(c, tok, obj))
    batches = [next(it) for _ in range(40)]
    is_b = np.concatenate([from_b(x) for x in batches])
    assert is_b.mean() == pytest.approx(0.25, abs=0.01)
    for x in batches:  # no window mixes the two members' text
        abc = np.isin(x["inputs"], np.array(tok.encode(ABC))).any(axis=1)
        assert not (abc & from_b(x)).any()
    # each member's windows come once per epoch of that member, reshuffled after it
    member_b = pipeline.load_examples(c, tok, obj, f"text:{b}", "train", train=True,
                                      shard=pipeline.HostShard())
    rows_b = [r.tobytes() for x in batches for r in x["inputs"][from_b(x)]]
    n_b = len(member_b)
    assert 2 * n_b <= len(rows_b)
    everything_b = {r.tobytes() for r in member_b[np.arange(n_b)]["inputs"]}
    assert set(rows_b[:n_b]) == set(rows_b[n_b:2 * n_b]) == everything_b
    assert rows_b[:n_b] != rows_b[n_b:2 * n_b]
    # the iterator's state (what a checkpoint saves) resumes the same batches
    again = iter(pipeline.train_dataset(c, tok, obj))
    for _ in range(7):
        next(again)
    resumed = iter(pipeline.train_dataset(c, tok, obj))
    resumed.set_state(again.get_state())
    for expected in batches[7:12]:
        np.testing.assert_array_equal(next(resumed)["inputs"], expected["inputs"])


def test_eval_covers_every_members_tokens_and_documents_stay_apart(two_files, tmp_path):
    a, b = two_files
    spec = f"text:{a}=3,text:{b}"
    c = tiny_config(**{"data.source": spec, "batch_size": 5})
    tok, _ = pipeline.get_tokenizer(c, None)
    obj = get_objective("causal_lm")

    def eval_tokens(source):
        return sum(float(x["weights"].sum()) for x in pipeline.eval_batches(c, tok, obj, source))

    assert eval_tokens(spec) == eval_tokens(f"text:{a}") + eval_tokens(f"text:{b}") > 0
    both = sources.read_documents(sources.open_split(spec, "validation", c), "text")
    apart = [sources.read_documents(sources.open_split(f"text:{p}", "validation", c), "text")
             for p in (a, b)]
    assert both == apart[0] + apart[1]  # each file one document: never joined across members
    # a training member evaluated apart reads its validation split, not its training text
    assert [split for _, _, split in pipeline.extra_eval_sets(c)] == []
    c.data.extra_eval_sources = f"a=text:{a};other=text:{tmp_path}/other.txt"
    assert [split for _, _, split in pipeline.extra_eval_sets(c)] == ["validation", "all"]
    # a mixture of files apart from the training ones is read whole, like one local file
    c.data.source = f"text:{tmp_path}/other.txt"
    c.data.eval_source = f"text:{b},text:{a}"
    assert pipeline.eval_source_and_split(c) == (c.data.eval_source, "all")


def test_a_classification_label_set_comes_from_every_member(tmp_path):
    for name, labels in (("a.tsv", ("neg", "pos")), ("b.tsv", ("pos", "mixed"))):
        rows = [f"text {i}\t{labels[i % 2]}" for i in range(20)]
        (tmp_path / name).write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    c = tiny_config(**{"model.arch": "encoder", "objective": "classification",
                       "data.source": f"tsv:{tmp_path}/a.tsv,tsv:{tmp_path}/b.tsv",
                       "data.text_column": "sentence"})
    get_objective("classification").resolve_config(c)
    assert c.data.labels == "mixed,neg,pos" and c.model.num_classes == 3


def test_nsp_pairs_come_from_their_own_member(tmp_path):
    """NSP draws a negative B from another document: of the same member, never of another."""
    paths = []
    for name, letters, seed in (("a.txt", ABC, 0), ("b.txt", XYZ, 1)):
        rng = np.random.default_rng(seed)
        docs = ["\n".join(" ".join("".join(rng.choice(list(letters), 4)) for _ in range(5))
                          for _ in range(6)) for _ in range(30)]
        (tmp_path / name).write_text("\n\n".join(docs) + "\n")
        paths.append(tmp_path / name)
    c = tiny_config(**{"model.arch": "encoder", "objective": "nsp", "tokenizer.kind": "char",
                       "data.source": f"text:{paths[0]},text:{paths[1]}"})
    tok, _ = pipeline.get_tokenizer(c, None)
    it = iter(pipeline.train_dataset(c, tok, get_objective("nsp")))
    abc, xyz = np.array(tok.encode(ABC)), np.array(tok.encode(XYZ))
    labels = []
    for _ in range(10):
        batch = next(it)
        has_abc = np.isin(batch["tokens"], abc).any(axis=1)
        has_xyz = np.isin(batch["tokens"], xyz).any(axis=1)
        assert (has_abc ^ has_xyz).all()
        assert has_xyz.mean() == 0.5
        labels.append(batch["label"])
    assert 0.3 < np.concatenate(labels).mean() < 0.7  # IsNext and NotNext both drawn


def test_a_run_on_a_mixture_trains_resumes_and_evaluates_every_member(two_files, tmp_path):
    a, b = two_files
    c = tiny_config(**{"data.source": f"text:{a}=3,text:{b}", "seq_len": 16,
                       "num_train_steps": 40, "eval_every_steps": 40})
    final = train_and_evaluate(c, tmp_path / "run")
    # 3 letters each, known to the char tokenizer: far below uniform over the 12-token vocabulary
    assert final["eval/loss"] < 1.3 < np.log(12)
    split = train_and_evaluate(c, tmp_path / "split", stop_at_step=20)
    split = train_and_evaluate(c, tmp_path / "split")
    assert split["eval/loss"] == final["eval/loss"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["source"] == c.data.source
    with pytest.raises(DataError, match="missing.txt' matches no file"):
        train_and_evaluate(tiny_config(**{"data.source": f"text:{a},text:{tmp_path}/missing.txt"}),
                           tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
