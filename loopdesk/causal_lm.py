"""What loopdesk reads from any Hugging Face causal LM: its tokenizer with a pad token, and its context length.

The bot and the trainer pad batches the same way: with the tokenizer's pad token, or with its EOS
where it has none (GPT-2). Padding is always masked out, and nothing finds EOS or padding by token
id alone, so a pad token equal to EOS (SmolLM2, GPT-2) never hides a reply's closing EOS.
"""

from __future__ import annotations

from typing import Any

CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx")


def load_tokenizer(ref: str) -> Any:
    """The base model's tokenizer, its pad token set to EOS where it has none.

    Raises:
        ValueError: the tokenizer has no EOS token (a reply could never end).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {ref} has no EOS token: replies could never end")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def context_length(config: Any) -> int:
    """Positions the model can attend over (``max_position_embeddings``, GPT-2's ``n_positions``, ...).

    Raises:
        ValueError: the config names no context length.
    """
    for name in CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"{type(config).__name__} names no context length (none of {', '.join(CONTEXT_FIELDS)})")
