"""The bootstrapped test-size base model: builds fast, loads with Auto classes, chats, stops, is probed."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer

from sim.bootstrap import (MANIFEST, SIZES, WARMUP_WINDOW, build_base_model, build_model, copy_spans, copy_warmup,
                           held_out_prompts, sample_replies, training_examples)
from sim.cli import bootstrap
from sim.company import load_company
from sim.corpus import CorpusConfig, generate_corpus
from sim.probe import reply_intent

ENV = {"LOOPDESK_BASE_MODEL": ""}

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Where is my order?"},
    {"role": "assistant", "content": "It ships today."},
    {"role": "user", "content": "Thanks"},
]


@pytest.fixture(scope="module")
def tokenizer(base_model_dir: Path):
    return AutoTokenizer.from_pretrained(base_model_dir)


def test_cli_builds_test_size_in_seconds_and_guards_existing_dirs(tmp_path: Path) -> None:
    out = tmp_path / "base"
    out.mkdir()
    (out / "notes.txt").write_text("not a model")
    runner = CliRunner()
    refused = runner.invoke(bootstrap, ["--size", "test", "--out", str(out)], env=ENV)
    assert refused.exit_code == 1 and "holds no loopdesk base model" in refused.output

    built = runner.invoke(bootstrap, ["--size", "test", "--out", str(out), "--seed", "1", "--force"], env=ENV)
    assert built.exit_code == 0, built.output
    assert not (out / "notes.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["base"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["size"] == "test" and manifest["seed"] == 1 and manifest["params"] > 0
    assert manifest["train_cpu_seconds"] < 30  # CPU time: wall time depends on the machine's load

    again = runner.invoke(bootstrap, ["--size", "test", "--out", str(out)], env=ENV)
    assert again.exit_code == 0 and "already built" in again.output


def test_cli_skips_when_a_base_model_is_configured(tmp_path: Path) -> None:
    env = {**ENV, "LOOPDESK_BASE_MODEL": "some/model", "LOOPDESK_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(bootstrap, [], env=env)
    assert result.exit_code == 0 and "nothing to bootstrap" in result.output
    assert list(tmp_path.iterdir()) == []


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


def test_probe_names_the_intent_a_reply_answers() -> None:
    company = load_company()
    for intent in company.intents:
        assert reply_intent(company, intent.canonical_reply) == intent.name
        assert reply_intent(company, company.styles.vague[0].format(topic=intent.topic)) == intent.name
    assert reply_intent(company, company.styles.off_topic[0]) is None


def test_manifest_records_the_grounded_probe(base_model_dir: Path) -> None:
    manifest = json.loads((base_model_dir / MANIFEST).read_text())
    probe = manifest["probe"]
    assert set(probe) == {"seen", "held_out", "edited", "new_topic", "out_of_scope"}
    for split in ("seen", "held_out"):
        result = probe[split]
        assert result["n"] == round(2 * len(load_company().intents) * (1 - result["no_passage"]))
        assert all(0 <= result[k] <= 1 for k in ("on_article", "all_facts", "wrong_facts", "eos"))
    assert probe["edited"]["n"] > 0 and 0 <= probe["edited"]["new_value"] <= 1
    assert probe["new_topic"]["its_passage"] > 0.5  # retrieval finds the evaluation-only article
    declines = probe["out_of_scope"]
    assert 0 < declines["no_passage"] < 1 and declines["declined"] >= declines["no_passage"] - 0.001
    assert manifest["eos_share"] == probe["held_out"]["eos"] and manifest["training_examples"] > manifest["corpus_dialogues"]
    assert 0 < manifest["warmup_loss"] < 20 and 0 < manifest["warmup_steps"] <= SIZES["test"].warmup_steps
    assert manifest["copy_examples"] == round(SIZES["test"].copy_share * manifest["training_examples"])


def test_training_examples_are_the_bots_prompts_with_the_loss_on_each_reply_once(tokenizer) -> None:
    corpus = generate_corpus(CorpusConfig(n_dialogues=60, knowledge_bases=4, seed=4))
    examples = training_examples(corpus, tokenizer, 320)
    trained = [t for d in corpus for t in d.turns if t.trained]
    losses = [tokenizer.decode([i for i, m in zip(e["input_ids"], e["completion_mask"]) if m]) for e in examples]
    assert "".join(losses) == "".join(f"{t.reply}<|eos|>" for t in trained)  # every reply once, in order
    for example in examples:
        text = tokenizer.decode(example["input_ids"])
        assert text.startswith(f"<|bos|><|system|>{load_company().shop.system_prompt}\nHelp article ")
        mask = example["completion_mask"]
        last_reply = max(i for i in range(1, len(mask)) if mask[i] and not mask[i - 1])
        assert text.endswith("<|eos|>") and last_reply <= 320 - 64  # its prompt fits the bot's prompt budget


def test_copy_spans_repeat_a_span_of_varying_length_and_distance_with_the_loss_on_the_repeat(tokenizer) -> None:
    sequences = copy_spans(tokenizer, 200, 48, seed=0)
    spans, distances = set(), set()
    for sequence in sequences:
        ids, mask = sequence["input_ids"], sequence["completion_mask"]
        assert len(ids) == len(mask) == 48 and min(ids) > max(tokenizer.all_special_ids)
        start, end = mask.index(1) - 1, len(mask) - mask[::-1].index(1)  # the repeat, its first token unmasked
        assert mask == [0] * (start + 1) + [1] * (end - start - 1) + [0] * (48 - end)
        repeat = ids[start:end]
        sources = [s for s in range(start - len(repeat) + 1) if ids[s:s + len(repeat)] == repeat]
        assert sources and 12 <= len(repeat) <= 24
        spans.add(len(repeat))
        distances.add(start - sources[-1])
    assert len(spans) > 8 and len(distances) > 16  # no fixed offset to copy from: only induction copies
    assert copy_spans(tokenizer, 200, 48, seed=0) == sequences != copy_spans(tokenizer, 200, 48, seed=1)


def test_copy_warmup_stops_once_its_recent_loss_is_under_the_stop_loss(tokenizer) -> None:
    shape = SIZES["test"]
    early = replace(shape, warmup_steps=3 * WARMUP_WINDOW, warmup_stop_loss=100.0)
    loss, steps = copy_warmup(build_model(tokenizer, early, 0), tokenizer, early, 0)
    assert steps == WARMUP_WINDOW and 0 < loss < 100
    never = replace(shape, warmup_steps=WARMUP_WINDOW + 5, warmup_stop_loss=0.0)
    assert copy_warmup(build_model(tokenizer, never, 0), tokenizer, never, 0)[1] == WARMUP_WINDOW + 5
