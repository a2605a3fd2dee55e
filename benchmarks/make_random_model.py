"""Write a randomly initialised model of a real architecture's shape (speed does not depend
on weight values), with a word-level tokenizer covering its whole vocabulary.

    python3 benchmarks/make_random_model.py --shape qwen3-8b --out /tmp/qwen3-8b-random
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

SHAPES = {
    # hidden, intermediate, layers, heads, kv heads, vocab, head_dim (Qwen3 model cards)
    "qwen3-8b": (4096, 12288, 36, 32, 8, 151936, 128),
    "qwen3-1.7b": (2048, 6144, 28, 16, 8, 151936, 128),
    "qwen3-0.6b": (1024, 3072, 28, 16, 8, 151936, 128),
}


def write_tokenizer(out: Path, vocab_size: int) -> None:
    """A word-level tokenizer with exactly vocab_size entries, loadable by AutoTokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<|endoftext|>": 1}
    vocab.update({f"w{i}": i for i in range(2, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<|endoftext|>", pad_token="<unk>"
    )
    fast.save_pretrained(out)


def qwen3_config(shape: str, **extra: object):
    """A Qwen3 config of one of SHAPES' sizes (untied head, 8K context)."""
    from transformers import Qwen3Config

    hidden, inter, layers, heads, kv, vocab, head_dim = SHAPES[shape]
    return Qwen3Config(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        vocab_size=vocab,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
        **extra,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-8b")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--device", default="cuda:0", help="where to initialise the weights")
    args = parser.parse_args()

    import torch
    from transformers import Qwen3ForCausalLM

    config = qwen3_config(args.shape, torch_dtype="bfloat16")
    vocab = config.vocab_size
    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(args.device):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(args.out, max_shard_size="4GB")
    write_tokenizer(args.out, vocab)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.shape}: {params / 1e9:.2f} B parameters, written to {args.out} "
        f"in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
