"""Sentence(-pair) classification with a BERT-style encoder: `configs/bert_classify.py:size=tiny`.

    # from a pretraining run (its encoder weights and WordPiece vocabulary; a fresh head):
    llmjax train --config=configs/bert_classify.py:size=tiny --workdir=runs/sst2 \\
        --config.init.workdir=runs/bert-tiny
    llmjax predict --workdir=runs/sst2 --text="a gorgeous , witty , seductive movie ."

Data: GLUE SST-2 as TSV from ../shared/data/sst2 (train.tsv trains, dev.tsv evaluates); for the
TFDS catalog use --config.data.source=tfds:glue/sst2 --config.data.eval_split=validation.
Pair tasks: set data.text_pair_column; regression (STS-B): --config.objective=regression.
Figures (tiny, 1000 steps, CPU): dev accuracy 0.763 fine-tuned from the configs/bert.py run,
0.776 from scratch; details in experiments/bert_sst2/README.md. From a Hugging Face checkpoint
(--config.init.hf_path=DIR; the model and tokenizer come from DIR): all-MiniLM-L6-v2, 400 steps
at lr 1e-4, dev accuracy 0.860 (experiments/minilm_sst2/README.md).
"""

import os

SST2 = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "sst2")


def get_config(arg: str | None = None):
    from llmjax import configs

    args = configs.parse_arg(arg, {"size": "tiny"})
    c = configs.sibling(__file__, "bert").get_config(
        f"size={args['size']},objective=classification")
    use_sst2(c)
    return c


def use_sst2(c) -> None:
    """SST-2 from ../shared/data and the fine-tuning schedule (configs/gpt_classify.py too)."""
    c.data.source = "tsv:" + os.path.abspath(os.path.join(SST2, "train.tsv"))
    c.data.eval_source = "tsv:" + os.path.abspath(os.path.join(SST2, "dev.tsv"))
    c.data.text_column, c.data.label_column = "sentence", "label"
    c.data.validation_fraction = 0.0  # all of train.tsv trains; dev.tsv evaluates
    c.seq_len, c.batch_size, c.num_train_steps = 64, 32, 2000
    c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 100, 500, 1000
    o = c.optimizer
    o.learning_rate, o.end_learning_rate, o.schedule, o.warmup_steps = 5e-4, 0.0, "linear", 200

