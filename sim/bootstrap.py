"""Build the tiny demo base model: a byte-level BPE tokenizer and a small Llama, SFT on the corpus.

Chat format (one line per message, no separators; ``<|eos|>`` ends every assistant turn)::

    <|bos|><|system|>You are ...<|user|>Where is my order?<|assistant|>You can ...<|eos|><|user|>...

A prompt for a new reply is the chat rendered with ``add_generation_prompt=True`` (it ends
with ``<|assistant|>``); generation stops at ``<|eos|>``. Loss is on assistant tokens only.
The manifest ``loopdesk_base.json`` records the build and its ``intent_probe`` (``sim/probe.py``:
replies sampled at temperature 1.0 within 64 tokens to seen and held-out phrasings: shares on
intent, stating every key fact, ending with EOS); ``eos_share_t1`` is the held-out EOS share.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sim.company import load_company
from sim.corpus import CorpusConfig, Message, generate_corpus
from sim.probe import as_dict, intent_probe

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
MANIFEST = "loopdesk_base.json"
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
    ``probe_per_intent`` is how many replies per intent and phrasing split the intent probe samples.
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


# default: one epoch over 20000 fresh chats (1250 steps of 16), ~610 CPU-seconds with one thread (the
# manifest's train_cpu_seconds; 654 s wall on a busy 2-core machine). 10000 chats (400 CPU-seconds) left the
# model garbling its templates: on seen opening questions 0.75 of its replies named the asked intent and
# 0.51 stated every key fact, against 0.87 and 0.60 with 20000 (``bench/loop_diagnostics.py replies``).
SIZES: dict[str, ModelSize] = {
    "test": ModelSize(vocab_size=1024, hidden=48, layers=2, heads=2, intermediate=96,
                      n_dialogues=240, epochs=2, batch_size=16, learning_rate=1e-2, probe_per_intent=2),
    "default": ModelSize(vocab_size=2048, hidden=128, layers=4, heads=4, intermediate=384,
                         n_dialogues=20000, epochs=1, batch_size=16, learning_rate=3e-3),
}


def train_tokenizer(chats: list[list[Message]], vocab_size: int, max_length: int) -> Any:
    """Train a byte-level BPE on the chats' text; wrap it with special tokens and the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, *ROLE_TOKENS.values()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator((m["content"] for chat in chats for m in chat), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=EOS,
                                        pad_token=PAD, extra_special_tokens=list(ROLE_TOKENS.values()),
                                        model_max_length=max_length)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


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


def sft(model: Any, tokenizer: Any, chats: list[list[Message]], size: ModelSize, seed: int,
        work_dir: Path, progress: bool) -> float:
    """Supervised fine-tuning with TRL's SFTTrainer, loss on assistant turns; returns the final loss."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(work_dir), num_train_epochs=size.epochs, per_device_train_batch_size=size.batch_size,
        learning_rate=size.learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05,
        weight_decay=0.0, max_length=size.max_length, assistant_only_loss=True,
        train_sampling_strategy="group_by_length", bf16=False, activation_checkpointing=False,
        use_cpu=True, seed=seed, data_seed=seed, save_strategy="no", report_to="none",
        logging_steps=25, disable_tqdm=not progress, dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_dict({"messages": chats}))
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
    """``n`` opening chats built from the held-out phrasings (system prompt + one customer message)."""
    company = load_company()
    texts = sorted(company.held_out_phrasings)
    system = {"role": "system", "content": company.shop.system_prompt}
    return [[system, {"role": "user", "content": texts[i % len(texts)]}] for i in range(n)]


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
        corpus = generate_corpus(CorpusConfig(n_dialogues=shape.n_dialogues, seed=seed))
        chats = [d.messages for d in corpus]
        tokenizer = train_tokenizer(chats, shape.vocab_size, shape.max_length)
        model = build_model(tokenizer, shape, seed)
        loss = sft(model, tokenizer, chats, shape, seed, tmp / "trainer", progress)
        train_seconds, cpu_seconds = time.monotonic() - started, time.process_time() - cpu_started
        model.eval()
        probe = as_dict(intent_probe(model, tokenizer, shape.probe_per_intent, seed))
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest = {
            "size": size, "seed": seed, "params": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(train_seconds, 1), "train_cpu_seconds": round(cpu_seconds, 1),
            "threads": shape.threads, "final_loss": round(loss, 4),
            "corpus_dialogues": len(chats), "vocab_size": len(tokenizer),
            "eos_share_t1": probe["held_out"]["eos"], "intent_probe": probe,
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
