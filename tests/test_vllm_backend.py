"""The vLLM backend's translation of requests and streamed answers, against payloads shaped like vLLM's
documented OpenAI-compatible API (``/v1/completions`` with ``logprobs`` and
``return_tokens_as_token_ids``, ``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``), served by a
stand-in HTTP server.

These prove the translation and when an adapter is unloaded from vLLM, not that a real vLLM on a GPU
agrees: that check is still missing. What the follower does with this engine (promotion, canary share,
refusals) is in test_adapter_follower, against the ``StandInVllm`` here.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from bot.runtime import GenerationError, make_engine
from bot.runtime.vllm_backend import Completion, VllmEngine, completion_request, sse_chunks, token_id
from harness.serving import serve
from tests.adapter_helpers import register_random_adapter, wait_for
from tests.vllm_helpers import RECORDED_STREAM, StandInVllm, sse_lines

def test_completion_request_asks_for_token_ids_and_logprobs_of_a_streamed_reply():
    body = completion_request("v0003", [1, 5, 9], 64, 1.0)
    assert body == {"model": "v0003", "prompt": [1, 5, 9], "max_tokens": 64, "temperature": 1.0, "top_p": 1.0,
                    "stream": True, "logprobs": 1, "return_tokens_as_token_ids": True,
                    "skip_special_tokens": True}


def test_streamed_chunks_become_text_token_ids_and_logprobs():
    completion = Completion()
    pieces = [completion.add(chunk) for chunk in sse_chunks(sse_lines(RECORDED_STREAM))]
    assert pieces == ["It ships", " today.", ""]
    assert (completion.text, completion.token_ids, completion.logprobs, completion.finish_reason) == (
        "It ships today.", [17, 42, 2], [-0.25, -1.5, -0.01], "stop")


def test_answers_without_token_ids_or_with_an_error_are_generation_errors():
    with pytest.raises(GenerationError, match="return_tokens_as_token_ids"):
        token_id(" ships")
    with pytest.raises(GenerationError, match="out of memory"):
        list(sse_chunks(['data: {"error": {"message": "out of memory", "code": 500}}']))


def test_engine_streams_from_vllm_and_loads_a_promoted_adapter_by_name(settings, store, base_model_dir: Path):
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(base_model_dir).eos_token_id
    vllm = StandInVllm(eos)
    with serve(vllm.app) as url:
        engine = make_engine(settings.replace(base_model=str(base_model_dir), vllm_url=url), store)
        assert isinstance(engine, VllmEngine)
        engine.start()
        try:
            streamed: list[str] = []
            gen = engine.generate([{"role": "user", "content": "Where is my order?"}], "base", streamed.append)
            sent = vllm.completions[-1]
            assert sent["model"] == str(base_model_dir) and sent["prompt"] == gen.prompt_token_ids
            assert (gen.reply_token_ids, gen.logprobs, gen.finished) == ([17, 42, eos], [-0.25, -1.5, -0.01], True)
            assert streamed == ["It ships", " today."] and gen.adapter_version == "base"
            assert 0 <= gen.ttft_ms <= gen.latency_ms

            version = register_random_adapter(store, base_model_dir, seed=1)
            store.adapters.promote(version)
            wait_for(lambda: engine.choose_version() == version)
            assert vllm.loads == [{"lora_name": version, "lora_path": str(Path(store.adapters.get(version).path).resolve())}]
            assert engine.generate([{"role": "user", "content": "hi"}], version).adapter_version == version
            assert vllm.completions[-1]["model"] == version
            assert engine.queue_depth() == 0
        finally:
            engine.stop()


def test_a_rejected_adapter_leaves_vllm_only_after_the_reply_running_under_it(settings, store, base_model_dir: Path):
    vllm = StandInVllm(eos_id=2)
    with serve(vllm.app) as url:
        engine = VllmEngine(settings.replace(base_model=str(base_model_dir), vllm_url=url), store, resync_s=0.1)
        engine.start()
        try:
            version = register_random_adapter(store, base_model_dir, seed=4)
            store.adapters.send_to_canary(version)
            wait_for(lambda: version in engine.loaded_versions())
            served: list[str] = []
            vllm.replying.clear()
            reply = threading.Thread(target=lambda: served.append(
                engine.generate([{"role": "user", "content": "hi"}], version).adapter_version))
            reply.start()
            wait_for(lambda: bool(vllm.completions))
            store.adapters.reject(version, "canary CSAT fell")
            wait_for(lambda: version not in engine.loaded_versions())  # no new replies under it
            time.sleep(0.5)  # several syncs while the reply runs
            assert vllm.unloads == []
            vllm.replying.set()
            reply.join(timeout=30)
            wait_for(lambda: vllm.unloads == [{"lora_name": version}])
            assert served == [version] and vllm.completions[-1]["model"] == version
        finally:
            vllm.replying.set()
            engine.stop()


def test_vllm_gets_the_prompt_the_in_process_engine_builds_with_the_help_articles(settings, store,
                                                                                  base_model_dir: Path):
    from transformers import AutoConfig, AutoTokenizer

    from bot.runtime.prompts import prompt_builder
    from loopdesk.articles import VersionedArticle

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    refunds = VersionedArticle(id="refunds", title="Refunds", version=4,
                               body="Your money is back within 5 business days. " * 40)
    messages = [{"role": "user", "content": "When do I get my money back?"}]
    served = settings.replace(base_model=str(base_model_dir), kb_passage_chars=300)
    vllm = StandInVllm(tokenizer.eos_token_id)
    with serve(vllm.app) as url:
        engine = VllmEngine(served.replace(vllm_url=url), store)
        engine.start()
        try:
            gen = engine.generate(messages, "base", passages=[refunds])
        finally:
            engine.stop()
    expected = prompt_builder(tokenizer, AutoConfig.from_pretrained(base_model_dir).max_position_embeddings,
                              served).build(messages, [refunds])
    assert vllm.completions[-1]["prompt"] == gen.prompt_token_ids == expected.token_ids
    assert gen.context == expected.text and 'Help article "Refunds" (refunds v4): ' in gen.context
