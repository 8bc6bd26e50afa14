"""The prefix store on the real test-size model: a chat's next turn takes the keys and values of its own
earlier turns, whatever other chats came in between, with the log-probs recomputing the whole prompt gives;
the store keeps within its byte budget, least recently used out first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.runtime.batching import Batch, Row
from bot.runtime.prefix_store import BLOCK_TOKENS, PrefixStore
from bot.runtime.worker import GenerationWorker, Request
from loopdesk.config import SettingsError, load_settings
from tests.test_batching import NEVER, TEMPERATURE, replay

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SYSTEM = {"role": "system", "content": "You are the support assistant of Northwind Outfitters. Answer briefly."}
CHATS = [
    ["Where is my order?", "It was a tent.", "Can you check again?", "Thanks, and when will it arrive?"],
    ["How do I return a jacket?", "It does not fit.", "Do I pay for the label?", "And the refund?"],
    ["I forgot my password.", "The email never came.", "I checked the spam folder.", "What now?"],
]


def render(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False).input_ids


def reply(worker: GenerationWorker, prompt_ids: list[int], tokens: int = 10) -> Request:
    request = Request("base", Row(prompt_ids, tokens))
    request.row.owner = request
    worker.submit(request)
    while request.events.get(timeout=60) != "done":
        pass
    assert not request.row.error
    return request


def test_a_chats_fourth_turn_reuses_its_own_earlier_turns_while_other_chats_interleave(base_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir).eval()
    cached = GenerationWorker(model, tokenizer.pad_token_id, NEVER, TEMPERATURE, 8, prefix_cache_bytes=2**24)
    recomputing = GenerationWorker(model, tokenizer.pad_token_id, NEVER, TEMPERATURE, 8, prefix_cache_bytes=0)
    histories = [[SYSTEM] for _ in CHATS]
    served: list[list[Request]] = [[] for _ in CHATS]
    cached.start()
    recomputing.start()
    try:
        for turn in range(4):  # each chat's turn in its turn: two other chats' turns between two of one chat's
            for chat, history in enumerate(histories):
                history.append({"role": "user", "content": CHATS[chat][turn]})
                prompt_ids = render(tokenizer, history)
                if turn == 3:
                    torch.manual_seed(chat)  # the same draws for both paths
                served[chat].append(reply(cached, prompt_ids))
                history.append({"role": "assistant",
                                "content": tokenizer.decode(served[chat][-1].row.reply_ids, skip_special_tokens=True)})
        fourth_recomputed = []
        for chat, history in enumerate(histories):
            torch.manual_seed(chat)
            fourth_recomputed.append(reply(recomputing, served[chat][3].row.prompt_ids))
    finally:
        cached.stop()
        recomputing.stop()
    for chat, requests in enumerate(served):
        third, fourth = requests[2].row, requests[3].row
        others = [served[c][3].row.prompt_ids for c in range(len(CHATS)) if c != chat]
        assert fourth.prompt_ids[:len(third.prompt_ids)] == third.prompt_ids
        assert requests[3].reused_tokens >= len(third.prompt_ids)  # its own third turn, prompt and reply
        assert all(requests[3].reused_tokens > common(fourth.prompt_ids, other) for other in others)
        for request in requests:  # every turn, reused or not, has the log-probs of the whole sequence at once
            assert request.row.logprobs == pytest.approx(replay(model, request.row), abs=1e-4)
        alone = fourth_recomputed[chat]
        assert alone.reused_tokens == 0
        assert alone.row.reply_ids == fourth.reply_ids
        assert max(abs(a - b) for a, b in zip(alone.row.logprobs, fourth.logprobs)) < 1e-4


def common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_the_store_keeps_within_its_budget_least_recently_used_out_first(base_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir).eval()
    prompts = [render(tokenizer, [SYSTEM, {"role": "user", "content": chat[0]}]) for chat in CHATS]
    with torch.inference_mode():
        batch = Batch.prefill(model, [Row(p, 4) for p in prompts], tokenizer.pad_token_id, NEVER, TEMPERATURE)
    per_token = batch.cache.bytes_per_token()
    store = PrefixStore(max_bytes=per_token * (len(prompts[0]) + len(prompts[1]) + len(prompts[2]) - 1))
    kept = [store.keep("base", batch.cache, i, p) for i, p in enumerate(prompts[:2])]
    assert len(store) == 2 and store.nbytes == per_token * (len(prompts[0]) + len(prompts[1]))
    assert store.match("base", prompts[0] + [5]) is kept[0]  # the first is now the most recently used
    assert store.match("v1", prompts[0] + [5]) is None  # another adapter version's keys differ
    store.keep("base", batch.cache, 2, prompts[2])  # over budget: the second goes
    assert len(store) == 2 and store.match("base", prompts[1] + [5]) is not kept[1]
    assert store.match("base", prompts[0] + [5]) is kept[0]
    assert store.nbytes <= store.max_bytes
    assert store.match("base", prompts[0][:BLOCK_TOKENS]) is None  # less than a whole block in common
    whole = store.match("base", prompts[2] + [5])
    assert store.keep("base", batch.cache, 2, prompts[2][:-3], source=whole) is whole  # held already: no copy
    assert len(store) == 2
    store.drop("base")
    assert len(store) == 0 and store.nbytes == 0
    assert PrefixStore(max_bytes=per_token * 10).keep("base", batch.cache, 0, prompts[0]) is None  # alone too big
    with pytest.raises(ValueError, match="holds"):
        batch.cache.cached_prompt(0, prompts[0][:-1])


def test_a_finished_reply_replaces_the_prompt_it_grew_from(base_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir).eval()
    prompt_ids = render(tokenizer, [SYSTEM, {"role": "user", "content": CHATS[0][0]}])
    row = Row(prompt_ids, 6)
    store = PrefixStore(max_bytes=2**24)
    with torch.inference_mode():
        batch = Batch.prefill(model, [row], tokenizer.pad_token_id, NEVER, TEMPERATURE)
        first = store.keep("base", batch.cache, 0, prompt_ids)
        while not row.done:
            batch.step(model, NEVER, TEMPERATURE)
    grown = store.keep("base", batch.cache, 0, prompt_ids + row.reply_ids[:-1], source=first)
    assert len(store) == 1 and grown.token_ids == prompt_ids + row.reply_ids[:-1]
    assert store.match("base", grown.token_ids + [7]) is grown


def test_a_negative_prefix_cache_budget_is_refused() -> None:
    with pytest.raises(SettingsError, match="LOOPDESK_PREFIX_CACHE_MB"):
        load_settings({"LOOPDESK_PREFIX_CACHE_MB": "-1"})
