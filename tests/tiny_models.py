"""Small real transformers model pairs made on the spot (no hub), for tests."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

SAMPLE_TEXT = [inspect.getsource(json), inspect.getsource(Path)]


def make_tokenizer(folder: Path, vocab_size: int = 400, extra: str = "") -> None:
    """Train a byte-level BPE tokenizer and save it so AutoTokenizer loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([t + extra for t in SAMPLE_TEXT], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.save_pretrained(folder)


def make_model(folder: Path, *, hidden: int, layers: int, seed: int, vocab_size: int) -> None:
    """A randomly initialised Llama-architecture causal LM saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)


def make_pair(root: Path, *, same_weights: bool = False) -> tuple[Path, Path]:
    """A target and a draft sharing one tokenizer; with same_weights the draft is the target."""
    target, draft = root / "tiny-target", root / "tiny-draft"
    for folder in (target, draft):
        folder.mkdir(parents=True, exist_ok=True)
        make_tokenizer(folder)
    vocab = len(json.loads((target / "tokenizer.json").read_text())["model"]["vocab"]) + 1
    make_model(target, hidden=64, layers=2, seed=1, vocab_size=vocab)
    if same_weights:
        make_model(draft, hidden=64, layers=2, seed=1, vocab_size=vocab)
    else:
        make_model(draft, hidden=32, layers=1, seed=2, vocab_size=vocab)
    return target, draft
