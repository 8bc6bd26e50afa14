"""The benchmark's shared reward model: the base model with a linear "good reply" probe as its head.

A sequence classifier of the tiny base model whose ``score`` head is a ridge-regularised linear
discriminant (w = (Σ + λI)⁻¹ (μ_good − μ_other)) of its final hidden state at a reply's EOS,
fitted on demo-corpus replies labelled by style (``good`` against the flawed styles), made
orthogonal to the mean hidden state (the head has no bias, so this centres scores near 0) and
scaled to unit standard deviation. Deterministic, built in seconds, and a real
``AutoModelForSequenceClassification`` that TRL's PPO can take as its ``reward_model``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bench.ppo_contenders.shared import last_hidden
from sim.corpus import CorpusConfig, generate_corpus


def build_reward_model(base_dir: Path, out_dir: Path, n_dialogues: int = 600, seed: int = 7,
                       ridge: float = 1e-2) -> dict[str, float]:
    """Fit the probe on ``n_dialogues`` fresh single-turn chats, save the classifier; return its accuracy.

    Returns the held-out (last 20%) pairwise accuracy: the share of (good, flawed) reply pairs
    in which the good reply scores higher.
    """
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1).eval()
    chats = generate_corpus(CorpusConfig(n_dialogues=n_dialogues, follow_up_share=0.0, seed=seed))
    sequences, labels = [], []
    for chat in chats:
        prompt = tokenizer.apply_chat_template(chat.prompt(0), add_generation_prompt=True, tokenize=False)
        reply = tokenizer(chat.turns[0].reply, add_special_tokens=False)["input_ids"]
        sequences.append(tokenizer(prompt, add_special_tokens=False)["input_ids"] + reply + [tokenizer.eos_token_id])
        labels.append(chat.styles[0] == "good")
    features = last_hidden(model, sequences, tokenizer.pad_token_id).double()
    good = torch.tensor(labels)
    split = int(0.8 * len(labels))
    fit_x, fit_good = features[:split], good[:split]
    mean_good, mean_other = fit_x[fit_good].mean(0), fit_x[~fit_good].mean(0)
    centred = torch.cat([fit_x[fit_good] - mean_good, fit_x[~fit_good] - mean_other])
    within = centred.T @ centred / len(centred)
    ridge_eye = ridge * within.diagonal().mean() * torch.eye(within.shape[0], dtype=within.dtype)
    weight = torch.linalg.solve(within + ridge_eye, mean_good - mean_other)
    mean_all = fit_x.mean(0)  # the head has no bias: centre scores by removing the mean's direction
    weight -= (weight @ mean_all) / (mean_all @ mean_all) * mean_all
    weight /= (fit_x @ weight).std()
    with torch.no_grad():
        model.score.weight.copy_(weight.to(model.score.weight.dtype).unsqueeze(0))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    scores = features[split:] @ weight
    held_good, held_other = scores[good[split:]], scores[~good[split:]]
    accuracy = (held_good[:, None] > held_other[None, :]).double().mean()
    return {"probe_pairwise_accuracy": float(accuracy), "probe_score_gap": float(held_good.mean() - held_other.mean())}
