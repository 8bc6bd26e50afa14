"""The policy PPO trains: a causal LM with a LoRA adapter plus a value head on the same trunk.

The reference model is the same network with the adapter disabled (``reference()``), so only
one copy of the base weights is ever in memory; ``freeze_reference`` makes a frozen second LoRA
adapter on the same trunk the reference instead (InstructGPT's KL to the SFT policy). One forward
pass yields both the next-token logits and a value per position.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Iterator

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from loopdesk.adapter_format import VALUE_HEAD_FILE
from trainer.config import PPOConfig

POLICY_ADAPTER = "default"  # peft's name of the adapter a PeftModel is created or loaded with
REFERENCE_ADAPTER = "reference"


class PolicyWithValueHead(nn.Module):
    """Base causal LM + LoRA adapter (the policy) and a linear value head on its last hidden state."""

    def __init__(self, lm: PeftModel) -> None:
        super().__init__()
        self.lm = lm
        hidden_size = lm.get_output_embeddings().in_features
        self.v_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.v_head.weight)
        nn.init.zeros_(self.v_head.bias)

    @classmethod
    def with_new_adapter(cls, base: PreTrainedModel, config: PPOConfig) -> "PolicyWithValueHead":
        """Wrap ``base`` (modified in place) with a fresh LoRA adapter (initialised from
        ``config.seed``, so a round is reproducible) and a zero value head."""
        torch.manual_seed(config.seed)
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
            task_type="CAUSAL_LM",
        )
        return cls(get_peft_model(base, lora))

    @classmethod
    def from_pretrained(
        cls, base: PreTrainedModel, path: str | Path, is_trainable: bool = True
    ) -> "PolicyWithValueHead":
        """Load an adapter and value head written by ``save_pretrained`` onto ``base``."""
        policy = cls(PeftModel.from_pretrained(base, str(path), is_trainable=is_trainable))
        policy.v_head.load_state_dict(load_file(str(Path(path) / VALUE_HEAD_FILE)))
        return policy

    def save_pretrained(self, path: str | Path) -> None:
        """Write the LoRA adapter (peft's safetensors + config) and the value head."""
        Path(path).mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(str(path), selected_adapters=[POLICY_ADAPTER])
        state = {k: v.detach().contiguous().cpu() for k, v in self.v_head.state_dict().items()}
        save_file(state, str(Path(path) / VALUE_HEAD_FILE))

    def freeze_reference(self, path: str | Path) -> None:
        """Make the adapter written at ``path`` the KL reference, frozen beside the trained one (LoRA
        weights only: the base weights stay one copy)."""
        self.lm.load_adapter(str(path), adapter_name=REFERENCE_ADAPTER, is_trainable=False)

    def reference(self) -> AbstractContextManager:
        """Context in which forward passes run the KL reference: the base model, or the adapter
        ``freeze_reference`` loaded."""
        return self._frozen_reference() if REFERENCE_ADAPTER in self.lm.peft_config else self.lm.disable_adapter()

    @contextmanager
    def _frozen_reference(self) -> Iterator[None]:
        self.lm.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
        try:
            yield
        finally:  # the policy's adapter active and trainable again, the reference frozen
            self.lm.set_adapter(POLICY_ADAPTER)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, T, V] and values [B, T] of left-padded sequences.

        Position ids count real tokens only, as ``generate`` does for left-padded prompts, so the
        log-probs here match those recorded at sampling time.
        """
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=True,
            use_cache=False,
        )
        values = self.v_head(out.hidden_states[-1]).squeeze(-1)
        return out.logits, values
