"""The bootstrapped test-size base model: builds fast, loads with Auto classes, chats, stops."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from sim.bootstrap import MANIFEST, build_base_model, held_out_prompts, sample_replies

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Where is my order?"},
    {"role": "assistant", "content": "It ships today."},
    {"role": "user", "content": "Thanks"},
]


@pytest.fixture(scope="module")
def tokenizer(base_model_dir: Path):
    return AutoTokenizer.from_pretrained(base_model_dir)


def test_test_size_builds_in_seconds_replacing_the_old_dir(tmp_path: Path) -> None:
    out = tmp_path / "base"
    out.mkdir()
    (out / "stale.txt").write_text("old model")
    started = time.monotonic()
    assert build_base_model(out, size="test", seed=1, progress=False) == out.resolve()
    assert time.monotonic() - started < 60
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["base"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["size"] == "test" and manifest["seed"] == 1 and manifest["params"] > 0


def test_manifest_and_auto_classes_load(base_model_dir: Path) -> None:
    manifest = json.loads((base_model_dir / MANIFEST).read_text())
    model = AutoModelForCausalLM.from_pretrained(base_model_dir)
    assert manifest["params"] == sum(p.numel() for p in model.parameters())
    assert model.config.eos_token_id == AutoTokenizer.from_pretrained(base_model_dir).eos_token_id


def test_chat_template_marks_roles_and_ends_assistant_turns_with_eos(tokenizer) -> None:
    text = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert text == ("<|bos|><|system|>Be brief.<|user|>Where is my order?"
                    "<|assistant|>It ships today.<|eos|><|user|>Thanks<|assistant|>")
    with pytest.raises(Exception, match="unknown role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_assistant_mask_covers_reply_and_its_eos_only(tokenizer) -> None:
    out = tokenizer.apply_chat_template(CHAT[:3], return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(masked) == "It ships today.<|eos|>"


def test_generation_stops_at_eos_at_least_sometimes(base_model_dir: Path, tokenizer) -> None:
    model = AutoModelForCausalLM.from_pretrained(base_model_dir).eval()
    replies = sample_replies(model, tokenizer, held_out_prompts(16), max_new_tokens=64)
    assert len(replies) == 16 and all(isinstance(text, str) for text, _ in replies)
    assert any(ended for _, ended in replies)


def test_unknown_size_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown size"):
        build_base_model(tmp_path / "m", size="huge")
