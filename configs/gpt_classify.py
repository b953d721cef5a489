"""Sentence(-pair) classification with a GPT-style decoder, as GPT-1 fine-tunes one: a bias-free
head on the last token's state (Hugging Face's ForSequenceClassification pooling).
`configs/gpt_classify.py:size=tiny,style=gpt2` (the sizes and styles of configs/gpt.py, BPE).

    # from a causal-LM run (its parameters and BPE vocabulary; a fresh head):
    llmjax train --config=configs/gpt.py:size=tiny,tokenizer=bpe --workdir=runs/gpt-wiki \\
        --config.data.source=text:../shared/data/wikitext-2/valid.txt \\
        --config.data.eval_source=text:../shared/data/wikitext-2/test.txt
    llmjax train --config=configs/gpt_classify.py:size=tiny --workdir=runs/gpt-sst2 \\
        --config.init.workdir=runs/gpt-wiki
    llmjax predict --workdir=runs/gpt-sst2 --text="a gorgeous , witty , seductive movie ."

Data and schedule as configs/bert_classify.py: GLUE SST-2 from ../shared/data/sst2, 2000 steps
of 32 sentences, lr 5e-4 with 200 warmup steps and linear decay. Figures (tiny, 3.3 min on 2 CPU
cores): dev accuracy 0.799 from scratch, 0.797 fine-tuned from the causal-LM run above (2000
steps on WikiText-2 valid.txt); details in experiments/gpt_sst2/README.md. Pair tasks: set
data.text_pair_column (<bos> a <eos> b <eos>); scores: --config.objective=regression. From a
Hugging Face decoder (--config.init.hf_path=DIR: GPT-2, LLaMA, Qwen2, ...) the model and
tokenizer come from DIR and its language-model head is left behind.
"""

from llmjax import configs


def get_config(arg: str | None = None):
    args = configs.parse_arg(arg, {"size": "tiny", "style": "gpt2"})
    c = configs.sibling(__file__, "gpt").get_config(
        f"size={args['size']},tokenizer=bpe,style={args['style']}")
    c.objective = "classification"
    configs.sibling(__file__, "bert_classify").use_sst2(c)
    return c

