"""Test-size models of other architectures than the bootstrapped tiny Llama, built from config in seconds.

Each family is a random-weight model with a byte-level BPE tokenizer trained here on the demo
corpus, set up the way its real counterpart ships:

- ``gpt2``: ``GPT2LMHeadModel`` (Conv1D layers, tied embeddings, absolute positions); one special
  token, ``<|endoftext|>``, is BOS and EOS; no pad token; a plain-text chat template of our own.
- ``qwen2``: ``Qwen2ForCausalLM`` (biased q/k/v projections, untied head); ChatML with a default
  system message, EOS ``<|im_end|>``, pad ``<|endoftext|>``.
- ``smollm2``: ``LlamaForCausalLM`` with SmolLM2-Instruct's tokenizer setup: ChatML, EOS = pad =
  ``<|im_end|>``.

A few hundred optimiser steps would teach a model the corpus; here 40 steps on the rendered chats
only teach it to end replies, so that replies both finish (EOS) and run out of tokens.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
CHATML_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n{{ default_system }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
FAMILIES = ("gpt2", "qwen2", "smollm2")
CONTEXT = 256  # positions of every family's model
TEACH_STEPS = 40


@dataclass(frozen=True)
class Family:
    """How one family's tokenizer and model are made."""

    specials: list[str]
    tokens: dict[str, str]  # bos_token / eos_token / pad_token → special token
    template: str
    model: Callable[[Any], Any]


def _gpt2(tokenizer: Any) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    eos = tokenizer.eos_token_id
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=CONTEXT, n_embd=32, n_layer=2,
                                      n_head=2, bos_token_id=eos, eos_token_id=eos))


def _qwen2(tokenizer: Any) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=CONTEXT, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None))


def _smollm2(tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=CONTEXT, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))


SPECS = {
    "gpt2": Family([ENDOFTEXT], {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT}, PLAIN_TEMPLATE, _gpt2),
    "qwen2": Family([ENDOFTEXT, IM_START, IM_END], {"eos_token": IM_END, "pad_token": ENDOFTEXT},
                    CHATML_TEMPLATE.replace("{{ default_system }}", "You are a helpful assistant."), _qwen2),
    "smollm2": Family([ENDOFTEXT, IM_START, IM_END],
                      {"bos_token": IM_START, "eos_token": IM_END, "pad_token": IM_END, "unk_token": ENDOFTEXT},
                      CHATML_TEMPLATE.replace("{{ default_system }}", "You are a helpful AI assistant named SmolLM."),
                      _smollm2),
}


@functools.lru_cache(maxsize=1)
def chats(n: int = 120) -> list[list[dict[str, str]]]:
    """Chats of the demo shop: one customer question, the first 2 to 12 words of a reply."""
    from sim.corpus import CorpusConfig, generate_corpus

    rng = random.Random(0)
    out = []
    for d in generate_corpus(CorpusConfig(n_dialogues=n, follow_up_share=0.0, reask_share=0.0)):
        question, reply = [m for m in d.messages if m["role"] != "system"][:2]
        words = reply["content"].split()
        out.append([question, {"role": "assistant", "content": " ".join(words[:rng.randint(2, 12)])}])
    return out


def train_tokenizer(family: Family, texts: list[str], vocab_size: int = 400) -> Any:
    """A byte-level BPE on ``texts`` with the family's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=family.specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, model_max_length=CONTEXT, **family.tokens)
    tokenizer.chat_template = family.template
    return tokenizer


def teach_to_stop(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], seed: int) -> None:
    """A few next-token steps on rendered chats, enough for replies to end with EOS now and then."""
    torch.manual_seed(seed)
    rows = [tokenizer(tokenizer.apply_chat_template(c, tokenize=False), add_special_tokens=False).input_ids[:96]
            for c in conversations]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(TEACH_STEPS):
        batch = [rows[(step * 8 + i) % len(rows)] for i in range(8)]
        width = max(map(len, batch))
        ids = torch.tensor([r + [tokenizer.eos_token_id] * (width - len(r)) for r in batch])
        labels = torch.tensor([r + [-100] * (width - len(r)) for r in batch])
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def build_family(name: str, out_dir: Path, seed: int = 0) -> Path:
    """Build, save and return the test-size model directory of family ``name``."""
    from transformers import set_seed

    family = SPECS[name]
    conversations = chats()
    tokenizer = train_tokenizer(family, [m["content"] for c in conversations for m in c])
    set_seed(seed)
    model = family.model(tokenizer)
    teach_to_stop(model, tokenizer, conversations, seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
