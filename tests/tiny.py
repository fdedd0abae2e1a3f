"""A tiny Llama and a byte-level BPE tokenizer trained on the project's own task text; no network."""
from __future__ import annotations

from pathlib import Path

import torch


def corpus() -> list[str]:
    from agent_forge_core.evals.tasks import BUILTIN
    from agent_forge_core.evals.text import natural_text

    lines = []
    for t in BUILTIN.values():
        for split in ("train", "test"):
            lines += [f"Q: {e.prompt}\nA:{e.target}\n" for e in t.examples(split, 150, 0)]
    return lines + natural_text("train")[:200_000].split("\n\n")


def build_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build_model(vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def make_tiny(folder: Path, seed: int = 0) -> Path:
    from agent_forge_core.model_io import save_model

    tok = build_tokenizer()
    model = build_model(len(tok), seed)
    save_model(model, tok, folder)
    return folder
