"""Translation (seq2seq) fine-tuning of a T5-style model: `configs/translate.py:size=tiny`.

From a span-corruption pretraining run (its parameters and SentencePiece vocabulary):

    llmjax train --config=configs/t5.py:size=tiny --workdir=runs/t5-pretrain
    llmjax train --config=configs/translate.py:size=tiny --workdir=runs/t5-en-de \\
        --config.init.workdir=runs/t5-pretrain
    llmjax eval --workdir=runs/t5-en-de --config.eval_decode_examples=0 \\
        --config.data.eval_source='parallel:../shared/data/multi30k/test_2016_flickr.en|../shared/data/multi30k/test_2016_flickr.de'
    llmjax generate --workdir=runs/t5-en-de --prompt="A dog runs on the beach." --beam_size=4

Without init.workdir it trains from scratch (with a SentencePiece vocabulary trained on both
sides). Data: Multi30k en -> de from ../shared/data (val evaluates during training); for WMT from
the TFDS catalog use --config.data.source=tfds:wmt14_translate/de-en
--config.data.eval_source=tfds:wmt14_translate/de-en --config.data.source_column=en
--config.data.target_column=de. Beam search (4 beams, length penalty 0.6) decodes for BLEU.

Figures (tiny, 1,200 steps, 18 min on 2 CPU cores each): test_2016_flickr BLEU 13.6 from
scratch, 4.6 fine-tuned from the configs/t5.py span-corruption run (at this budget pretraining
on the same text hurts); details in experiments/t5_multi30k/README.md.
"""

from llmjax import configs


def get_config(arg: str | None = None):
    size = configs.parse_arg(arg, {"size": "tiny"})["size"]
    return configs.sibling(__file__, "t5").get_config(f"size={size},objective=seq2seq")
