"""Build the tiny demo base model: a byte-level BPE tokenizer and a small Llama, SFT on the corpus.

Chat format (one line per message, no separators; ``<|eos|>`` ends every assistant turn)::

    <|bos|><|system|>You are ...
    Help article "..." (order-status v1): You can follow ...<|user|>Where is my order?<|assistant|>You can ...<|eos|>

A prompt for a new reply is the chat rendered with ``add_generation_prompt=True`` (it ends
with ``<|assistant|>``); generation stops at ``<|eos|>``. The fresh model first learns to
repeat spans of random tokens found earlier in its context (``copy_warmup``: where it learns to read
values back from its passage), then is fine-tuned on the corpus with more such spans mixed in, which
keep that copying through SFT. Each reply of the corpus is one training example, prompt and
completion as the bot would build them: the system message with the passage retrieved for that
turn, then the chat so far, oldest turns dropped while the prompt is longer than the context less
the bot's reply budget (as the bot's prompt builder does); the loss is on the reply only. The
manifest ``loopdesk_base.json`` records the build and its ``probe`` (``sim/probe.py``: replies
sampled at the serving temperature to grounded prompts); ``eos_share`` is the held-out EOS share.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sim.company import load_company
from sim.corpus import CorpusConfig, Dialogue, Message, generate_corpus
from sim.probe import REPLY_TOKENS, as_dict, base_probe, grounded_prompt, shop_articles

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
MANIFEST = "loopdesk_base.json"
WARMUP_WINDOW = 20  # copy warm-up steps whose mean loss decides that copying has formed
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}"
    "{% elif message['role'] == 'assistant' %}"
    "<|assistant|>{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% else %}<|{{ message['role'] }}|>{{ message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class ModelSize:
    """Model shape, corpus size and SFT schedule of one bootstrap size.

    ``threads`` is torch's CPU thread count while building: on a busy 2-core machine a second
    thread made steps up to 8x slower (threads spin waiting for each other), so one is default.
    ``max_length`` is the longest chat trained on and the model's declared context.
    ``probe_per_intent`` is how many replies per intent and phrasing split the probe samples;
    ``knowledge_bases`` how many drawn knowledge bases the corpus' chats are spread over;
    ``copy_warmup`` trains on ``copy_spans`` of ``warmup_length`` tokens at ``warmup_learning_rate``
    before SFT, for at most ``warmup_steps`` steps (it stops once the mean loss of the last
    ``WARMUP_WINDOW`` steps is under ``warmup_stop_loss``), and ``copy_share`` as many of them as the
    corpus has training sequences are mixed into SFT, which keeps the copying through it.
    """

    vocab_size: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    n_dialogues: int
    epochs: float
    batch_size: int
    learning_rate: float
    threads: int = 1
    max_length: int = 320
    probe_per_intent: int = 8
    knowledge_bases: int = 128
    warmup_steps: int = 1500
    warmup_length: int = 48
    warmup_learning_rate: float = 1e-3
    warmup_stop_loss: float = 1.0
    copy_share: float = 0.25


# default: the copy warm-up until induction forms (1101 steps with seed 0, ~110 CPU-seconds), then one epoch
# over 8000 fresh chats (11897 training sequences with their passages, mean 191 tokens, and 2974 copy spans:
# 930 steps of 16); 514 CPU-seconds with one thread (the manifest's train_cpu_seconds; one thread, so also
# about the wall time on a quiet machine): `loopdesk bootstrap` took 9.5 minutes wall at a load average of 2.7
# on 2 cores (91% of a core). Held-out replies (bench/base_probe.py, seeds 0 1 2) name the asked intent 0.74
# of the time, state every key fact 0.53 and a wrong value 0.14. 12000 chats (1393 steps, 816 CPU-seconds at
# a load of 4.8) gave 0.80, 0.59 and 0.18, but do not build in 10 minutes on 2 cores. Before the copy spans were
# drawn at random places (a 150-step warm-up on 32 tokens repeated right after, none in SFT) the model
# copied no values (12000 chats: 0.78, 0.13 and 0.60); mixing those fixed repeats into SFT kept a "copy the
# token 32 back" the chats never use, and no more (0.81, 0.03 and 0.74). Before the passages were in the
# context, 10000 chats left the model garbling its templates (0.75 of its replies to seen openings named the
# asked intent, 0.51 stated every key fact; 0.87 and 0.60 with 20000).
SIZES: dict[str, ModelSize] = {
    "test": ModelSize(vocab_size=1024, hidden=48, layers=2, heads=2, intermediate=96,
                      n_dialogues=240, epochs=2, batch_size=16, learning_rate=1e-2, probe_per_intent=2,
                      knowledge_bases=16, warmup_steps=10),
    "default": ModelSize(vocab_size=2048, hidden=128, layers=4, heads=4, intermediate=384,
                         n_dialogues=8000, epochs=1, batch_size=16, learning_rate=3e-3),
}


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> Any:
    """Train a byte-level BPE on the corpus' texts; wrap it with special tokens and the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, *ROLE_TOKENS.values()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=EOS,
                                        pad_token=PAD, extra_special_tokens=list(ROLE_TOKENS.values()),
                                        model_max_length=max_length)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def corpus_texts(corpus: list[Dialogue]) -> list[str]:
    """Every text the model reads or writes: each turn's system message, question and reply."""
    return [text for d in corpus for t in d.turns for text in (t.context, t.question, t.reply)]


def prompt_length(tokenizer: Any, messages: list[Message]) -> int:
    """Tokens of the prompt for the next reply to ``messages``."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False, verbose=False).input_ids)


def _groups(dialogue: Dialogue) -> list[list[int]]:
    """The chat's trained replies, grouped: consecutive ones generated under the same system message
    (an opening and its re-ask often see the same passage) share one training sequence."""
    groups: list[list[int]] = []
    for index, turn in enumerate(dialogue.turns):
        if not turn.trained:
            continue
        last = groups[-1][-1] if groups else None
        if last == index - 1 and dialogue.turns[last].context == turn.context:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def _sequence(tokenizer: Any, dialogue: Dialogue, members: list[int], max_length: int) -> dict[str, list[int]] | None:
    """The token ids of the chat up to the group's last reply under the group's system message, and a
    mask of the group's replies (with their EOS); the oldest turns before the group are dropped while
    the last reply's prompt is longer than ``max_length`` less the bot's reply budget. None when even
    the group alone does not fit."""
    first, last = members[0], members[-1]
    messages = dialogue.prompt(last) + [{"role": "assistant", "content": dialogue.turns[last].reply}]
    dropped = 0
    while prompt_length(tokenizer, messages[:-1]) > max_length - REPLY_TOKENS:
        if dropped == first:
            return None
        messages, dropped = [messages[0], *messages[3:]], dropped + 1
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, assistant = list(out["input_ids"]), list(out["assistant_masks"])
    mask, reply, inside = [0] * len(ids), dropped - 1, False
    for position, bit in enumerate(assistant):  # each run of assistant tokens is one reply, oldest first
        reply += bool(bit) and not inside
        inside = bool(bit)
        mask[position] = int(inside and reply in members)
    return {"input_ids": ids, "completion_mask": mask}


def training_examples(corpus: list[Dialogue], tokenizer: Any, max_length: int) -> list[dict[str, list[int]]]:
    """Training sequences of every reply a model generates (the bot's fixed declines are only history),
    each under the system message that reply was generated with, the loss on those replies only: a
    group of consecutive replies under one system message is one sequence (else each reply is)."""
    examples = []
    for dialogue in corpus:
        for members in _groups(dialogue):
            whole = _sequence(tokenizer, dialogue, members, max_length)
            if whole is not None:
                examples.append(whole)
                continue
            for member in members:  # the group does not fit as one sequence: each reply on its own
                alone = _sequence(tokenizer, dialogue, [member], max_length)
                if alone is not None:
                    examples.append(alone)
    return examples


def build_model(tokenizer: Any, size: ModelSize, seed: int) -> Any:
    """A freshly initialised Llama-style causal LM sized for the tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, set_seed

    set_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.heads,
        max_position_embeddings=size.max_length, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def copy_spans(tokenizer: Any, n: int, length: int, seed: int) -> list[dict[str, list[int]]]:
    """``n`` training sequences of ``length`` random tokens where a span of a random length (a quarter
    to half of ``length``) comes again at a random later place, the loss on the repeat after its first
    token: the copying a reply needs to read values back from its context, on its own. A fixed span and
    distance would be learnt as "copy the token that far back", which no chat needs; at random places
    only an induction head (find the current token earlier, predict the one that followed it) copies."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    first = max(tokenizer.all_special_ids) + 1  # the special tokens come first in the vocabulary

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    sequences = []
    for ids in torch.randint(first, len(tokenizer), (n, length), generator=generator).tolist():
        span = draw(length // 4, length // 2)
        source = draw(0, length - 2 * span)
        target = draw(source + span, length - span)
        ids[target:target + span] = ids[source:source + span]
        mask = [0] * length
        mask[target + 1:target + span] = [1] * (span - 1)  # the repeat's first token cannot be predicted
        sequences.append({"input_ids": ids, "completion_mask": mask})
    return sequences


def copy_warmup(model: Any, tokenizer: Any, size: ModelSize, seed: int) -> tuple[float, int]:
    """Teach the fresh model to read back its context before SFT; returns the mean loss of the last
    ``WARMUP_WINDOW`` steps and the steps taken.

    The LM loss on ``copy_spans`` until that mean is under ``size.warmup_stop_loss`` (or for
    ``size.warmup_steps``). Answering from a passage means copying its values, which SFT on the corpus
    alone, where a reply's values are a few tokens, does not teach a model trained from scratch. The
    default model's induction heads form suddenly, after ~1100 steps at 1e-3 (the loss drops from ~6
    to under 1 within ~100 steps); at SFT's 3e-3 they had not formed after 600.
    """
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=size.warmup_learning_rate, weight_decay=0.0)
    spans = copy_spans(tokenizer, size.warmup_steps * size.batch_size, size.warmup_length, seed)
    model.train()
    losses: deque[float] = deque(maxlen=WARMUP_WINDOW)
    for step in range(size.warmup_steps):
        batch = spans[step * size.batch_size:(step + 1) * size.batch_size]
        tokens = torch.tensor([s["input_ids"] for s in batch])
        labels = tokens.masked_fill(torch.tensor([s["completion_mask"] for s in batch]) == 0, -100)
        output = model(input_ids=tokens, labels=labels)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(output.loss.item())
        if len(losses) == WARMUP_WINDOW and sum(losses) / WARMUP_WINDOW < size.warmup_stop_loss:
            return sum(losses) / WARMUP_WINDOW, step + 1
    return sum(losses) / max(1, len(losses)), size.warmup_steps


def sft(model: Any, tokenizer: Any, examples: list[dict[str, list[int]]], size: ModelSize, seed: int,
        work_dir: Path, progress: bool) -> float:
    """Supervised fine-tuning with TRL's SFTTrainer on tokenised examples, loss where their
    ``completion_mask`` is set; returns the final loss."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(work_dir), num_train_epochs=size.epochs, per_device_train_batch_size=size.batch_size,
        learning_rate=size.learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05,
        weight_decay=0.0, max_length=size.max_length, completion_only_loss=True,
        train_sampling_strategy="group_by_length", bf16=False, activation_checkpointing=False,
        use_cpu=True, seed=seed, data_seed=seed, save_strategy="no", report_to="none",
        logging_steps=25, disable_tqdm=not progress, dataloader_num_workers=0,
    )
    dataset = Dataset.from_dict({key: [e[key] for e in examples] for key in ("input_ids", "completion_mask")})
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=dataset)
    result = trainer.train()
    return float(result.training_loss)


def sample_replies(model: Any, tokenizer: Any, chats: list[list[Message]], temperature: float = 1.0,
                   max_new_tokens: int = 64) -> list[tuple[str, bool]]:
    """Sample one reply per chat; each is (text, whether generation ended with EOS)."""
    import torch

    prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = side
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                             max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
    new = out[:, batch["input_ids"].shape[1]:].tolist()
    return [(tokenizer.decode(ids, skip_special_tokens=True), tokenizer.eos_token_id in ids) for ids in new]


def held_out_prompts(n: int) -> list[list[Message]]:
    """``n`` opening chats as the bot prompts them for the held-out phrasings: the passage retrieved
    from the shop's knowledge base as shipped in the system message, then the customer's message."""
    from loopdesk.knowledge import KnowledgeIndex

    company = load_company()
    index = KnowledgeIndex(shop_articles(company))
    prompts = [grounded_prompt(company, index, text) for text in sorted(company.held_out_phrasings)]
    found = [chat for chat, _ in filter(None, prompts)]
    return [found[i % len(found)] for i in range(n)]


def _replace_dir(new: Path, out_dir: Path) -> None:
    """Move ``new`` to ``out_dir``, swapping out whatever was there."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
        out_dir.rename(old / "model")
    new.rename(out_dir)
    if old is not None:
        shutil.rmtree(old)


def build_base_model(out_dir: Path, size: str = "default", seed: int = 0, progress: bool = True) -> Path:
    """Train tokenizer and model on the demo corpus and save both atomically to ``out_dir``."""
    import torch

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    shape = SIZES[size]
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(shape.threads)
    try:
        started, cpu_started = time.monotonic(), time.process_time()
        corpus = generate_corpus(CorpusConfig(n_dialogues=shape.n_dialogues, knowledge_bases=shape.knowledge_bases,
                                              seed=seed))
        tokenizer = train_tokenizer(corpus_texts(corpus), shape.vocab_size, shape.max_length)
        examples = training_examples(corpus, tokenizer, shape.max_length)
        model = build_model(tokenizer, shape, seed)
        warmup_loss, warmup_steps = copy_warmup(model, tokenizer, shape, seed)
        copies = copy_spans(tokenizer, round(shape.copy_share * len(examples)), shape.warmup_length, seed + 1)
        loss = sft(model, tokenizer, examples + copies, shape, seed, tmp / "trainer", progress)
        train_seconds, cpu_seconds = time.monotonic() - started, time.process_time() - cpu_started
        model.eval()
        probe = as_dict(base_probe(model, tokenizer, shape.probe_per_intent, seed))
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest = {
            "size": size, "seed": seed, "params": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(train_seconds, 1), "train_cpu_seconds": round(cpu_seconds, 1),
            "threads": shape.threads, "warmup_loss": round(warmup_loss, 4), "warmup_steps": warmup_steps,
            "final_loss": round(loss, 4), "corpus_dialogues": len(corpus), "training_examples": len(examples),
            "copy_examples": len(copies), "vocab_size": len(tokenizer),
            "eos_share": probe["held_out"]["eos"], "probe": probe,
            "system_prompt": load_company().shop.system_prompt, "shape": asdict(shape),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(previous_threads)
    return out_dir
