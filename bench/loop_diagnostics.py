"""Diagnostics behind docs/findings.md: what a policy says, what a reward model rewards,
and how far PPO gets when the reward is perfect.

    python bench/loop_diagnostics.py replies var/base-model [ADAPTER_DIR]
    python bench/loop_diagnostics.py reward-model var/base-model RUN_DIR/reward_model
    python bench/loop_diagnostics.py reference var/base-model
    python bench/loop_diagnostics.py ppo-ceiling var/base-model --steps 60 --out /tmp/ceiling \
        [--reward rubric|reference] [--set learning_rate=1e-3 --set ppo_epochs=1]

``replies``: 12 opening questions per intent (training phrasings, then held-out ones), prompted as the
bot prompts them (the passage retrieved from the shop's articles as shipped), one reply each sampled
at temperature 1; the neutral rubric's mean score and the share of replies
with all key facts, wrong facts, off topic, grovelling/flattery, and on the asked intent.
``reward-model``: the same base-model replies scored by a round's reward model; Spearman correlation
with the rubric, and how often it prefers the asked intent's canonical reply to the sampled reply and
to the next intent's canonical reply (chance: 50%).
``reference``: the expert-reference reward (``trainer.references``: word F1 against the asked intent's
canonical reply, what the simulated expert writes as a correction) on the same base replies; its
Spearman correlation with the rubric, to compare with a reward model's.
``ppo-ceiling``: PPO (``trainer.ppo``, default ``PPOConfig`` unless ``--set``) from the base on opening
questions, with the rubric itself as the reward (the most a perfect reward model could give in that
many steps) or, with ``--reward reference``, the expert-reference reward as if every context had been
corrected; every 5 steps it prints the rubric's mean stars of the last 5 steps' rollouts.
Seeded; one torch thread.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/feedback_store.py would shadow the feedback_store package
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import torch  # noqa: E402

from sim.bootstrap import sample_replies  # noqa: E402
from sim.company import load_company  # noqa: E402
from sim.probe import opening_chats, reply_intent  # noqa: E402
from sim.rubric import judge_reply  # noqa: E402

PER_INTENT = 12


def sampled(model, tokenizer, held_out: bool, seed: int = 1):
    """(intent, chat, reply text) for PER_INTENT opening questions per intent."""
    company = load_company()
    chats, _ = opening_chats(company, PER_INTENT, held_out, random.Random(seed))
    replies = []
    for start in range(0, len(chats), 64):
        replies += sample_replies(model, tokenizer, [c for _, c in chats[start:start + 64]])
    return [(intent, chat, text) for (intent, chat), (text, _) in zip(chats, replies)]


def load(base: str, adapter: str | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(base), AutoModelForCausalLM.from_pretrained(base)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return tokenizer, model.eval()


def replies(args) -> None:
    tokenizer, model = load(args.base, args.adapter)
    company = load_company()
    torch.manual_seed(0)
    for split, held_out in (("seen", False), ("held-out", True)):
        rows = sampled(model, tokenizer, held_out)
        judged = [judge_reply(company, intent, text) for intent, _, text in rows]
        n = len(judged)
        share = lambda test: sum(map(test, judged)) / n  # noqa: E731
        on_intent = sum(reply_intent(company, text) == intent.name for intent, _, text in rows) / n
        print(f"{split:8s} rubric {sum(j.score() for j in judged) / n:.2f}  all facts {share(lambda j: j.facts_found == 1):.2f}"
              f"  wrong facts {share(lambda j: bool(j.wrong_facts)):.2f}  off topic {share(lambda j: j.off_topic):.2f}"
              f"  grovel/flatter {share(lambda j: j.sways):.2f}  on intent {on_intent:.2f}"
              f"  words {sum(j.words for j in judged) / n:.1f}  (n={n})")


def reward_model(args) -> None:
    from scipy.stats import spearmanr
    from trainer.reward_model import RewardModel

    tokenizer, model = load(args.base, None)
    rm = RewardModel.load(args.base, args.reward_model)
    company = load_company()
    torch.manual_seed(0)
    rows = sampled(model, tokenizer, held_out=False)
    prompts = [tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) for _, chat, _ in rows]
    scores = rm.score(prompts, [text for _, _, text in rows])
    rubric = [judge_reply(company, intent, text).score() for intent, _, text in rows]
    canonical = rm.score(prompts, [intent.canonical_reply for intent, _, _ in rows])
    following = {i.name: company.intents[(k + 1) % len(company.intents)] for k, i in enumerate(company.intents)}
    other = rm.score(prompts, [following[intent.name].canonical_reply for intent, _, _ in rows])
    n = len(rows)
    print(f"Spearman(reward model, rubric) on {n} base replies: {spearmanr(scores, rubric).statistic:.2f}")
    print(f"asked intent's canonical reply scored above the sampled reply: {sum(c > s for c, s in zip(canonical, scores)) / n:.0%}")
    print(f"asked intent's canonical reply scored above the next intent's: {sum(c > o for c, o in zip(canonical, other)) / n:.0%}")


def reference(args) -> None:
    from scipy.stats import spearmanr
    from trainer.references import word_f1, words

    tokenizer, model = load(args.base, None)
    company = load_company()
    torch.manual_seed(0)
    rows = sampled(model, tokenizer, held_out=False)
    f1 = [2 * word_f1(words(text), words(intent.canonical_reply)) - 1 for intent, _, text in rows]
    rubric = [judge_reply(company, intent, text).score() for intent, _, text in rows]
    print(f"Spearman(expert-reference reward, rubric) on {len(rows)} base replies: {spearmanr(f1, rubric).statistic:.2f}")


def ppo_ceiling(args) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.config import PPOConfig
    from trainer.policy import PolicyWithValueHead
    from trainer.ppo import PPOTrainer
    from trainer.references import word_f1, words

    overrides = {}
    for item in args.set:
        key, _, raw = item.partition("=")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    config = PPOConfig(**overrides)
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    company = load_company()
    chats, _ = opening_chats(company, 20, False, random.Random(7))
    prompts = [tokenizer(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
                         add_special_tokens=False)["input_ids"] for _, c in chats]
    intent_of = {tuple(p): intent for p, (intent, _) in zip(prompts, chats)}
    judged: list[float] = []

    def reward(pairs):
        judged.clear()
        out = []
        for p, r in pairs:
            intent, text = intent_of[tuple(p)], tokenizer.decode(r, skip_special_tokens=True)
            judged.append(judge_reply(company, intent, text).score())
            out.append((judged[-1] - 3) / 2 if args.reward == "rubric"
                       else 2 * word_f1(words(text), words(intent.canonical_reply)) - 1)
        return out

    policy = PolicyWithValueHead.with_new_adapter(AutoModelForCausalLM.from_pretrained(args.base), config)
    ppo = PPOTrainer(policy, config, tokenizer.eos_token_id, tokenizer.pad_token_id)
    rng, started, stars = random.Random(0), time.monotonic(), []
    for step in range(args.steps):
        stats = ppo.step_on_prompts([list(p) for p in rng.choices(prompts, k=config.batch_size)], reward)
        stars.append(sum(judged) / len(judged))
        if step % 5 == 4 or step == args.steps - 1:
            print(f"step {step + 1:3d}  rubric (last 5 steps) {sum(stars[-5:]) / len(stars[-5:]):.2f}  "
                  f"KL {stats['kl']:.2f}  {time.monotonic() - started:.0f} s", flush=True)
    ppo.save(args.out)
    print(f"adapter in {args.out}; measure it with: python bench/loop_diagnostics.py replies {args.base} {args.out}")


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("replies")
    p.add_argument("base")
    p.add_argument("adapter", nargs="?")
    p.set_defaults(run=replies)
    p = commands.add_parser("reward-model")
    p.add_argument("base")
    p.add_argument("reward_model")
    p.set_defaults(run=reward_model)
    p = commands.add_parser("reference")
    p.add_argument("base")
    p.set_defaults(run=reference)
    p = commands.add_parser("ppo-ceiling")
    p.add_argument("base")
    p.add_argument("--reward", choices=["rubric", "reference"], default="rubric")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[], help="PPOConfig field=value (JSON values)")
    p.set_defaults(run=ppo_ceiling)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
