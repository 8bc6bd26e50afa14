"""The reward model: the base model with a scalar head and its own LoRA, trained on preference pairs.

Pairing rule (``build_pairs``), over the bot turns of one round and the rewards the reward builder
gave them:

1. **Corrections.** Every expert's corrected reply to a bot turn is *chosen* over the bot's reply,
   both after the turn's exact prompt context. A correction equal to the reply is skipped.
2. **Another question's correction.** An expert's correction is also *chosen* over up to
   ``cross_negatives`` corrections written for other turns (different text, drawn at random),
   after this turn's prompt: the right answer beats a good answer to a different question. Without
   these pairs the model learns what a corrected reply looks like, not whether it answers the
   question (on the first default-model loop round it preferred the right intent's canonical reply
   to another intent's only 46% of the time).
3. **Same customer message, different reward.** Bot turns answering the same customer message
   (compared with case and whitespace folded: the trainer knows no intents, so the message stands
   in for one) are paired when their rewards differ by at least ``min_reward_gap``; the higher
   reward is *chosen*. Each reply keeps its own prompt context. At most ``max_pairs_per_message``
   pairs per message, widest reward gaps first.
4. **Rated turns across messages.** Each rewarded turn is also paired with up to ``rated_pairs``
   turns answering any other message whose reward differs by at least ``rated_gap``; the higher
   reward is *chosen*, each reply after its own prompt. Rewards share one scale (CSAT stars and
   expert scores), so a Bradley–Terry model may compare them across prompts; customer messages
   rarely repeat word for word, so rule 3 alone leaves most ratings unused (3 pairs from a
   150-conversation round, against 330 from this rule).
5. **An agent's reply after a handoff.** The agent's first reply after a handoff to a person is *chosen*
   over the bot turn that led to it (the last bot turn before it), both after that turn's exact prompt
   context: what the person said is what the bot should have said. A reply equal to the bot's or to an
   expert's correction of it is skipped, and so is a handoff because no help article fitted: the agent
   answers the message no article fitted, which the bot never answered with the model, so no logged
   prompt is its context.

Beyond ``max_pairs`` a seeded random subset is kept. Training uses TRL's ``RewardTrainer`` (Bradley–Terry loss −log σ(r_chosen − r_rejected)) on
pre-tokenized ``chosen_ids``/``rejected_ids``. A share of pairs is held out and the held-out
pairwise accuracy (share of pairs where chosen outscores rejected) is reported each run.
A sequence is the prompt's token ids followed by the reply's; a finished reply ends with EOS. The
score is read at each sequence's last attended token (``pool_at_last_token``), not at the last token
that differs from the pad id, so where pad = EOS a finished reply's closing EOS is still scored.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Sequence

import torch
from feedback_store.records import TurnWithFeedback

from loopdesk.causal_lm import load_tokenizer
from trainer.config import RewardModelConfig

TokenPair = tuple[list[int], list[int]]


@dataclass(frozen=True)
class PreferencePair:
    """Two (prompt ids, reply ids) sequences, the first preferred; ``source`` says which rule made it."""

    chosen: TokenPair
    rejected: TokenPair
    source: str


def message_key(text: str) -> str:
    """A customer message folded for grouping: lowercase, single spaces, no outer spaces."""
    return re.sub(r"\s+", " ", text).strip().lower()


def correction_ids(feedback: TurnWithFeedback, tokenizer) -> list[list[int]]:
    """The distinct expert corrections of the turn's reply as finished replies (token ids + EOS), in a
    stable order; empty corrections and those equal to the reply are left out."""
    texts = sorted({a.corrected_reply.strip() for a in feedback.annotations} - {"", feedback.turn.text.strip()})
    return [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]


def agent_reply_ids(feedback: TurnWithFeedback, tokenizer) -> list[int] | None:
    """The agent's first reply after the handoff this turn led to, as a finished reply (token ids + EOS);
    None where the turn led to none, nobody replied, the reply equals the bot's, or no article fitted."""
    handoff = feedback.handoff
    if handoff is None or not handoff.led_to_handoff or handoff.reason == "no_article":
        return None
    text = handoff.agent_reply.strip()
    if not text or text == feedback.turn.text.strip():
        return None
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def build_pairs(turns: Sequence[TurnWithFeedback], rewards: dict[tuple[str, int], float],
                tokenizer, config: RewardModelConfig) -> list[PreferencePair]:
    """Preference pairs from corrections, agents' replies and reward-ranked turns (module docstring)."""
    pairs: list[PreferencePair] = []
    groups: dict[str, list[tuple[float, TokenPair]]] = defaultdict(list)
    corrected: list[tuple[list[int], list[list[int]]]] = []  # (prompt, its corrections)
    rated: list[tuple[float, TokenPair]] = []
    for feedback in turns:
        turn = feedback.turn
        bot = (list(turn.prompt_token_ids), list(turn.reply_token_ids))
        if not bot[0] or not bot[1]:
            continue
        corrections = correction_ids(feedback, tokenizer)
        for ids in corrections:
            pairs.append(PreferencePair((bot[0], ids), bot, "correction"))
        if corrections:
            corrected.append((bot[0], corrections))
        agent = agent_reply_ids(feedback, tokenizer)
        if agent is not None and agent not in corrections:
            pairs.append(PreferencePair((bot[0], agent), bot, "handoff"))
        reward = rewards.get((feedback.conversation_id, turn.index))
        if reward is not None and feedback.customer_text:
            groups[message_key(feedback.customer_text)].append((reward, bot))
        if reward is not None:
            rated.append((reward, bot))
    for members in groups.values():
        ranked = sorted(
            ((abs(a[0] - b[0]), a, b) for a, b in combinations(members, 2)
             if abs(a[0] - b[0]) >= config.min_reward_gap),
            key=lambda item: -item[0],
        )[: config.max_pairs_per_message]
        for _, a, b in ranked:
            high, low = (a, b) if a[0] > b[0] else (b, a)
            pairs.append(PreferencePair(high[1], low[1], "reward"))
    pairs += cross_pairs(corrected, config.cross_negatives, config.seed)
    pairs += rated_pairs(rated, config.rated_pairs, config.rated_gap, config.seed)
    return pairs if len(pairs) <= config.max_pairs else random.Random(config.seed).sample(pairs, config.max_pairs)


def rated_pairs(rated: list[tuple[float, TokenPair]], per_turn: int, gap: float, seed: int) -> list[PreferencePair]:
    """Rule 4: each rewarded turn against up to ``per_turn`` others (any message) whose reward differs
    by at least ``gap``; the higher reward is chosen, each reply after its own prompt."""
    rng = random.Random(seed + 1)
    pairs = []
    for index, (reward, turn) in enumerate(rated):
        apart = [other for other in rated[index + 1:] if abs(other[0] - reward) >= gap]
        for other_reward, other in rng.sample(apart, min(per_turn, len(apart))):
            high, low = (turn, other) if reward > other_reward else (other, turn)
            pairs.append(PreferencePair(high, low, "rated"))
    return pairs


def cross_pairs(corrected: list[tuple[list[int], list[list[int]]]], per_correction: int,
                seed: int) -> list[PreferencePair]:
    """Rule 2: each correction chosen over other turns' distinct corrections, after its own prompt."""
    pool = sorted({tuple(ids) for _, corrections in corrected for ids in corrections})
    rng = random.Random(seed)
    pairs = []
    for prompt, corrections in corrected:
        others = [list(ids) for ids in pool if list(ids) not in corrections]
        for ids in corrections:
            for other in rng.sample(others, min(per_correction, len(others))):
                pairs.append(PreferencePair((prompt, ids), (prompt, other), "cross"))
    return pairs


def split_pairs(pairs: list[PreferencePair], eval_share: float,
                seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Shuffle deterministically and hold out ``eval_share`` of the pairs (at least one of two or more)."""
    shuffled = list(pairs)
    random.Random(seed).shuffle(shuffled)
    n_eval = round(len(shuffled) * eval_share)
    if eval_share > 0 and len(shuffled) >= 2:
        n_eval = max(1, n_eval)
    return shuffled[n_eval:], shuffled[:n_eval]


def _sequence(pair: TokenPair, max_length: int) -> list[int]:
    """Prompt + reply, dropping the prompt's oldest tokens to fit ``max_length``."""
    prompt, reply = pair
    keep = max(0, max_length - len(reply))
    return (prompt[-keep:] if keep else []) + reply[:max_length]


def pool_at_last_token(model: torch.nn.Module) -> None:
    """Make a sequence classifier (peft-wrapped or not) score each row at its last attended token.

    transformers pools at the rightmost token that is not ``pad_token_id``: with pad = EOS a finished
    reply is scored before its EOS, exactly like the same reply cut off. A hook on the score head keeps
    the per-token scores; one on ``model`` (the module called) picks them by the attention mask instead.
    """
    head = next((m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "score"), None)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no score head")
    per_token: list[torch.Tensor] = []
    head.register_forward_hook(lambda module, args, output: per_token.append(output))

    def pool(module: torch.nn.Module, args: tuple, kwargs: dict, output):
        scores = per_token.pop()
        per_token.clear()
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(scores.shape[:2], dtype=torch.long, device=scores.device)
        last = (torch.arange(mask.shape[1], device=mask.device) * mask).argmax(-1)  # right or left padding
        output.logits = scores[torch.arange(len(last), device=scores.device), last]
        return output

    model.register_forward_hook(pool, with_kwargs=True)


class RewardModel:
    """A sequence-classification model (one label) with a LoRA adapter, scoring prompt + reply."""

    def __init__(self, model, tokenizer, max_length: int) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length

    @staticmethod
    def _base(base_model_ref: str):
        """Tokenizer (with a pad token) and a fresh scalar-head model of the base."""
        from transformers import AutoModelForSequenceClassification

        tokenizer = load_tokenizer(base_model_ref)
        model = AutoModelForSequenceClassification.from_pretrained(
            base_model_ref, num_labels=1, pad_token_id=tokenizer.pad_token_id)
        return tokenizer, model

    @classmethod
    def train(cls, base_model_ref: str, pairs: list[PreferencePair], config: RewardModelConfig,
              output_dir: Path) -> "RewardModel":
        """Train a new reward model on ``pairs`` with TRL's RewardTrainer; checkpoints go under ``output_dir``."""
        from datasets import Dataset
        from peft import LoraConfig
        from trl import RewardConfig, RewardTrainer

        if not pairs:
            raise ValueError("the reward model needs at least one preference pair")
        torch.manual_seed(config.seed)
        tokenizer, model = cls._base(base_model_ref)
        dataset = Dataset.from_list([
            {"chosen_ids": _sequence(p.chosen, config.max_length),
             "rejected_ids": _sequence(p.rejected, config.max_length)} for p in pairs])
        args = RewardConfig(
            output_dir=str(output_dir / "trainer"), num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
            max_length=None, bf16=False, gradient_checkpointing=False, save_strategy="no",
            report_to="none", disable_tqdm=True, logging_steps=1_000_000, seed=config.seed,
            dataloader_num_workers=0, dataloader_pin_memory=False,
        )
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                          target_modules=config.lora_target_modules, task_type="SEQ_CLS")
        trainer = RewardTrainer(model=model, args=args, train_dataset=dataset,
                                processing_class=tokenizer, peft_config=lora)
        pool_at_last_token(trainer.model)
        trainer.train()
        return cls(trainer.model, tokenizer, config.max_length)

    @classmethod
    def load(cls, base_model_ref: str, path: Path, max_length: int = 512) -> "RewardModel":
        """A reward model saved by ``save`` (LoRA and head) on top of the base."""
        from peft import PeftModel

        tokenizer, model = cls._base(base_model_ref)
        model = PeftModel.from_pretrained(model, str(path))
        pool_at_last_token(model)
        return cls(model, tokenizer, max_length)

    def save(self, path: Path) -> None:
        """Write the LoRA adapter and scalar head (peft safetensors) to ``path``."""
        self.model.save_pretrained(str(path))

    @torch.no_grad()
    def score_ids(self, pairs: Sequence[TokenPair], batch_size: int = 32) -> list[float]:
        """Scalar scores of (prompt ids, reply ids) pairs."""
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        scores: list[float] = []
        for start in range(0, len(pairs), batch_size):
            rows = [_sequence((list(p), list(r)), self.max_length) for p, r in pairs[start:start + batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row in enumerate(rows):  # right padding, as the RewardTrainer's collator does
                ids[i, :len(row)] = torch.tensor(row)
                mask[i, :len(row)] = 1
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            scores.extend(logits.squeeze(-1).float().cpu().tolist())
        return scores

    def score(self, prompts: list[str], replies: list[str]) -> list[float]:
        """Scores of finished text replies (an EOS is appended) after their prompt texts."""
        tok = self.tokenizer
        pairs = [(tok(p, add_special_tokens=False)["input_ids"],
                  tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
                 for p, r in zip(prompts, replies, strict=True)]
        return self.score_ids(pairs)

    def pairwise_accuracy(self, pairs: list[PreferencePair]) -> float:
        """Share of pairs whose chosen sequence scores above the rejected one."""
        chosen = self.score_ids([p.chosen for p in pairs])
        rejected = self.score_ids([p.rejected for p in pairs])
        return sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)
