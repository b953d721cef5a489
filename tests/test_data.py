"""Tokenizers, packing, sources (generated / text files / TFDS catalog via mock_data), batches."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import shared_file, tiny_config

from llmjax.data import packing, pipeline, sources
from llmjax.data.generated import MarkovLanguage
from llmjax.data.text_builder import DataError
from llmjax.data.tokenizers import (
    BOS_ID,
    EOS_ID,
    UNK_ID,
    ByteTokenizer,
    CharTokenizer,
    TokenizerMismatchError,
    load_tokenizer,
    train_tokenizer,
)
from llmjax.objectives import get_objective

TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler — ü\n"


@pytest.mark.parametrize("kind", ["char", "byte", "bpe", "wordpiece"])
def test_tokenizers_round_trip_and_reload(kind, tmp_path):
    tok = train_tokenizer(kind, [TEXT] * 20, vocab_size=300)
    ids = tok.encode(TEXT)
    if kind == "wordpiece":  # splits off punctuation; decoding joins with spaces
        assert tok.decode(ids).startswith("To be, or not to be : that is the question.")
    else:
        assert tok.decode(ids) == TEXT
    assert min(ids) >= 5, "ids 0..4 are reserved for special tokens"
    tok.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.encode(TEXT) == ids and again.vocab_size == tok.vocab_size


def test_a_tokenizer_saved_with_another_id_layout_is_refused(tmp_path):
    """A char vocabulary saved by a version with four special tokens (before <mask>) would be
    read one id off: loading names the difference instead."""
    import json

    CharTokenizer.train(["abc"]).save(tmp_path / "tok")
    config_file = tmp_path / "tok" / "tokenizer_config.json"
    saved = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({"kind": "char", "lowercase": False, "vocab_size": 7}))
    with pytest.raises(TokenizerMismatchError, match="vocab_size 7 when saved, 8 now"):
        load_tokenizer(tmp_path / "tok")
    saved["special_ids"]["mask"] = None
    config_file.write_text(json.dumps(saved))
    with pytest.raises(TokenizerMismatchError, match="special_ids"):
        load_tokenizer(tmp_path / "tok")


def test_char_tokenizer_maps_unseen_characters_to_unk():
    tok = CharTokenizer.train(["abc"])
    assert tok.encode("abz") == [5, 6, UNK_ID]
    assert tok.vocab_size == 8


def test_byte_tokenizer_needs_no_training():
    assert ByteTokenizer().encode("é") == [0xC3 + 5, 0xA9 + 5]


def test_windows_cover_every_token_once_and_never_predict_across_documents():
    docs = [np.array([10, 11, 12]), np.array([20, 21]), np.array([30, 31, 32, 33])]
    tokens, doc_ids = packing.token_stream(docs, ByteTokenizer())
    assert tokens.tolist() == [BOS_ID, 10, 11, 12, EOS_ID, BOS_ID, 20, 21, EOS_ID,
                               BOS_ID, 30, 31, 32, 33, EOS_ID]
    windows = packing.Windows(tokens, doc_ids, 4, 4, keep_partial=True)
    ex = windows[np.arange(len(windows))]
    targets = ex["targets"][(ex["segment_ids"] > 0) & (ex["targets"] != 0)]
    assert sorted(targets.tolist()) == sorted(tokens[1:].tolist())
    # the only unweighted real targets are the <bos> that follow an <eos>
    real = (ex["segment_ids"] > 0) & (ex["targets"] != 0)
    unweighted = ex["targets"][(ex["weights"] == 0) & real]
    assert unweighted.tolist() == [BOS_ID, BOS_ID]
    assert ex["segment_ids"][1].tolist() == [1, 2, 2, 2]  # inputs [eos | bos, 20, 21]
    assert len(packing.Windows(tokens, doc_ids, 4, 4, keep_partial=False)) == 3
    assert len(ex["inputs"]) == 4
    every_offset = packing.Windows(tokens, doc_ids, 4, 1, keep_partial=False)
    assert len(every_offset) == len(tokens) - 4
    assert every_offset[np.array([3])]["inputs"].tolist() == [[12, EOS_ID, BOS_ID, 20]]
    halves = [every_offset.shard(i, 2) for i in range(2)]
    assert [len(h) for h in halves] == [5, 6]
    np.testing.assert_array_equal(halves[1][np.array([0])]["inputs"],
                                  every_offset[np.array([5])]["inputs"])


def test_text_source_splits_characters_and_joins_documents(tmp_path):
    (tmp_path / "a.txt").write_text("first line\nsecond line\n" * 50)
    (tmp_path / "b.txt").write_text("another file\n" * 30)
    c = tiny_config(**{"data.source": f"text:{tmp_path}/*.txt"})
    train = sources.read_documents(sources.open_split(c.data.source, "train", c), "text")
    val = sources.read_documents(sources.open_split(c.data.source, "validation", c), "text")
    everything = (tmp_path / "a.txt").read_text() + (tmp_path / "b.txt").read_text()
    cut = int(len(everything) * 0.9)
    assert "".join(train) == everything[:cut] and "".join(val) == everything[cut:]
    assert len(train) == 2 and len(val) == 1  # documents are files
    # a changed file is prepared again, not silently reused
    (tmp_path / "b.txt").write_text("changed\n" * 30)
    val = sources.read_documents(sources.open_split(c.data.source, "validation", c), "text")
    assert "changed" in "".join(val)


def test_text_source_errors_name_the_problem(tmp_path):
    c = tiny_config()
    with pytest.raises(DataError, match="matches no file"):
        sources.open_split(f"text:{tmp_path}/nothing*.txt", "train", c)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt: bytes at offset 3 are not UTF-8"):
        sources.open_split(f"text:{tmp_path}/latin1.txt", "train", c)
    (tmp_path / "ok.txt").write_text("hello\n")
    with pytest.raises(DataError, match="has no split 'test'"):
        sources.open_split(f"text:{tmp_path}/ok.txt", "test", c)


def test_jsonl_source_reads_the_same_records_as_tsv(tmp_path):
    """The same rows as JSON Lines (a label as a JSON number) and as TSV: equal records, split
    alike, so every objective reads jsonl: as it reads tsv:."""
    import json

    rows = [(f"film number {i} was {'fine' if i % 3 else 'dull'}", i % 3) for i in range(40)]
    (tmp_path / "rows.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    (tmp_path / "rows.jsonl").write_text(
        "".join(json.dumps({"sentence": t, "label": y}) + "\n" for t, y in rows))
    c = tiny_config()
    for split in ("train", "validation"):
        tsv = list(sources.iter_records(sources.open_split(f"tsv:{tmp_path}/rows.tsv", split, c)))
        jsonl = list(sources.iter_records(
            sources.open_split(f"jsonl:{tmp_path}/rows.jsonl", split, c)))
        assert jsonl == tsv and len(tsv) == (36 if split == "train" else 4)
    assert jsonl[0] == {"sentence": b"film number 36 was dull", "label": b"0"}  # validation


@pytest.mark.parametrize("lines,expected", [
    (['{"text": "a"}', '{"text": "b"'], r"bad.jsonl:2: not JSON \(Expecting"),
    (['["text", "a"]'], r"bad.jsonl:1: a JSON list, not an object"),
    (['{"text": "a", "label": 1}', '{"text": "b"}'],
     r"bad.jsonl:2: keys differ .* \(missing \['label'\], extra \[\]\)"),
    (["", "  "], "hold no JSON objects"),
])
def test_jsonl_errors_name_the_line(tmp_path, lines, expected):
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=expected):
        sources.open_split(f"jsonl:{tmp_path}/bad.jsonl", "train", tiny_config())


def test_parquet_shards_read_the_same_records_as_jsonl(tmp_path):
    """A Hugging Face Hub layout (a split in two Parquet shards; numbers, token lists and
    answer dicts as columns) reads record for record as the same rows in JSON Lines, so every
    objective reads parquet: as it reads jsonl:."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"context": f"Eve came {i}.", "label": i % 2, "tokens": ["Eve", "came", str(i)],
             "answers": {"text": ["Eve"], "answer_start": [0]}} for i in range(30)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for shard, part in enumerate((rows[:12], rows[12:])):
        pq.write_table(pa.Table.from_pylist(part),
                       tmp_path / f"train-{shard:05d}-of-00002.parquet")
    c = tiny_config()
    for split in ("train", "validation"):
        jsonl = list(sources.iter_records(
            sources.open_split(f"jsonl:{tmp_path}/rows.jsonl", split, c)))
        parquet = list(sources.iter_records(
            sources.open_split(f"parquet:{tmp_path}/train-*.parquet", split, c)))
        assert parquet == jsonl and len(parquet) == (27 if split == "train" else 3)
    assert parquet[0]["tokens"] == b'["Eve", "came", "27"]' and parquet[0]["label"] == b"1"


def test_parquet_errors_name_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "notes.parquet").write_text("not parquet\n")
    with pytest.raises(DataError, match=r"notes.parquet: not a Parquet file"):
        sources.open_split(f"parquet:{tmp_path}/notes.parquet", "train", tiny_config())
    pq.write_table(pa.Table.from_pylist([{"text": "a"}]), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pylist([{"sentence": "b"}]), tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"b.parquet: columns \['sentence'\] differ from"):
        sources.open_split(f"parquet:{tmp_path}/[ab].parquet", "train", tiny_config())


def test_catalog_dataset_through_tfds_mock_data():
    c = tiny_config(**{"data.source": "tfds:lm1b", "tokenizer.kind": "byte"})
    with tfds.testing.mock_data(num_examples=64):
        tok, _ = pipeline.get_tokenizer(c, None)
        batch = next(iter(pipeline.train_dataset(c, tok, get_objective("causal_lm"))))
        evals = pipeline.eval_batches(c, tok, get_objective("causal_lm"), split="test")
    assert batch["inputs"].shape == (8, 32) and batch["weights"].sum() > 0
    assert len(evals) >= 1


def test_tiny_shakespeare_catalog_name_resolves_with_mock_data():
    c = tiny_config(**{"data.source": "tfds:tiny_shakespeare"})
    with tfds.testing.mock_data(num_examples=3):
        records = sources.open_split(c.data.source, "train", c)
        docs = sources.read_documents(records, "text")
    assert len(docs) == 3 and all(isinstance(d, str) for d in docs)


def test_same_seed_same_batches_and_hosts_read_disjoint_shards():
    c = tiny_config()
    tok, _ = pipeline.get_tokenizer(c, None)
    obj = get_objective("causal_lm")

    def first_batches(seed, shard=None):
        c.seed = seed
        it = iter(pipeline.train_dataset(c, tok, obj, shard or pipeline.HostShard()))
        return [next(it)["inputs"] for _ in range(3)]

    np.testing.assert_array_equal(first_batches(0), first_batches(0))
    assert not np.array_equal(first_batches(0)[0], first_batches(1)[0])
    records = sources.open_split("generated", "train", c)
    halves = [sources.read_documents(sources.shard_records(records, i, 2), "text")
              for i in range(2)]
    assert halves[0] + halves[1] == sources.read_documents(records, "text")
    assert len(halves[0]) == len(halves[1]) == 150
    shards = [pipeline.load_examples(c, tok, obj, "generated", "train", train=True,
                                     shard=pipeline.HostShard(i, 2)) for i in range(2)]
    rows = [{r.tobytes() for r in s[np.arange(len(s))]["inputs"]} for s in shards]
    assert not rows[0] & rows[1]


def test_block_reads_return_every_record_in_order(tmp_path):
    """iter_records reads READ_BLOCK keys per call; blocks must not skip, repeat or reorder."""
    rows = [f"row {i}\t{i % 3}" for i in range(2 * sources.READ_BLOCK + 37)]
    (tmp_path / "t.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    c = tiny_config(**{"data.validation_fraction": 0.0})
    records = sources.open_split(f"tsv:{tmp_path}/t.tsv", "train", c)
    assert [r["sentence"] for r in sources.iter_records(records)] == [
        f"row {i}".encode() for i in range(len(rows))]
    part = sources.shard_records(records, 1, 3)  # a host's block, offset into the split
    assert ([r["sentence"] for r in sources.iter_records(part)]
            == [part[i]["sentence"] for i in range(len(part))])
    assert part[0]["sentence"] == f"row {len(rows) // 3}".encode()


def test_an_unreachable_download_host_fails_fast_with_the_offline_fix(tmp_path, monkeypatch):
    """tfds alone would retry an unreachable URL for minutes without a word."""
    import socket

    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = socket.create_server(("127.0.0.1", 0))  # listening: reachable
    sources.check_download_hosts([f"https://127.0.0.1:{server.getsockname()[1]}/a.txt"],
                                 "tfds:x", "/d")
    closed = server.getsockname()[1]
    server.close()  # nothing listens there now: refused at once
    with pytest.raises(DataError, match=rf"'tfds:x' is not prepared in /d and its download host "
                                        rf"127.0.0.1:{closed} cannot be reached .* "
                                        r"set data.tfds_data_dir=DIR"):
        sources.check_download_hosts([f"https://127.0.0.1:{closed}/a.txt"], "tfds:x", "/d")
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:3128")  # downloads go through it
    sources.check_download_hosts([f"https://127.0.0.1:{closed}/a.txt"], "tfds:x", "/d")
    builder = tfds.builder("tiny_shakespeare", data_dir=str(tmp_path))
    assert sources._download_is_real(builder)
    with tfds.testing.mock_data(num_examples=1):
        assert not sources._download_is_real(builder)  # mock_data downloads nothing


def test_fewer_examples_than_one_batch_is_a_data_error():
    c = tiny_config(**{"batch_size": 65536})  # ~30k training windows
    tok, _ = pipeline.get_tokenizer(c, None)
    with pytest.raises(DataError, match="fewer than one batch of 65536: use more data"):
        pipeline.train_dataset(c, tok, get_objective("causal_lm"))


def test_eval_batches_pad_with_weightless_examples():
    c = tiny_config(**{"batch_size": 7})
    tok, _ = pipeline.get_tokenizer(c, None)
    batches = pipeline.eval_batches(c, tok, get_objective("causal_lm"))
    assert all(b["inputs"].shape == (7, 32) for b in batches)
    assert batches[-1]["weights"].sum() < batches[0]["weights"].sum()


def test_markov_language_is_deterministic_and_has_documents():
    g = tiny_config().data.generated
    a = MarkovLanguage(g).documents(50, g.seed, 0)
    assert a == MarkovLanguage(g).documents(50, g.seed, 0)
    assert 30 < np.mean([len(d) for d in a]) < 300
    assert set("".join(a)) <= set("abcdefghijkl")


def test_tiny_shakespeare_file_reads_exactly(tmp_path):
    path = shared_file("tinyshakespeare", "input.txt")
    c = tiny_config(**{"data.source": f"text:{path}"})
    train = "".join(sources.read_documents(sources.open_split(c.data.source, "train", c), "text"))
    assert len(train) == 1_003_854  # nanoGPT's 90% split


def test_data_shards_make_batches_independent_of_the_host_count():
    """Two hosts' batches, joined, are one host's batches with data.shards=2; and an epoch of
    a host's batches holds each of its examples once."""
    c = tiny_config(**{"data.shards": 2, "data.train_window_stride": 0})
    tok, _ = pipeline.get_tokenizer(c, None)
    obj = get_objective("causal_lm")
    hosts = [iter(pipeline.train_dataset(c, tok, obj, pipeline.HostShard(i, 2)))
             for i in range(2)]
    one = iter(pipeline.train_dataset(c, tok, obj, pipeline.HostShard(0, 1)))
    for _ in range(3):
        parts = [next(h) for h in hosts]
        joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        both = next(one)
        for k in both:
            np.testing.assert_array_equal(both[k], joined[k])
    mine = pipeline.load_examples(c, tok, obj, "generated", "train", train=True,
                                  shard=pipeline.HostShard(0, 2))
    per_host = c.batch_size // 2
    epoch = iter(pipeline.train_dataset(c, tok, obj, pipeline.HostShard(0, 2)))
    seen = [r.tobytes() for _ in range(len(mine) // per_host) for r in next(epoch)["inputs"]]
    everything = {r.tobytes() for r in mine[np.arange(len(mine))]["inputs"]}
    assert len(set(seen)) == len(seen) and set(seen) <= everything
    assert len(everything) - len(seen) < per_host  # all but the dropped remainder
