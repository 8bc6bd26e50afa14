"""Continuous batching on the real test-size model: rows that join a running batch (a longer prompt
widens its cache, one joins without a prefill and reads its prompt a token per step), leave it (a later row moves into their place), outgrow its cache's room, and run
under different adapters in the same forward passes, each keep the log-probs of its reply generated alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.runtime.adapters import read_verified
from bot.runtime.batching import Batch, Row, sample
from bot.runtime.lora import MultiLora, prepare
from tests.adapter_helpers import write_adapter

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NEVER = -1  # an EOS id no sampled token has: rows end by their token budget only
TEMPERATURE = 0.7


def prompt(tokenizer, text: str) -> list[int]:
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False)
    return tokenizer(rendered, add_special_tokens=False).input_ids


def replay(model: torch.nn.Module, row: Row) -> list[float]:
    ids = torch.tensor([row.prompt_ids + row.reply_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float() / TEMPERATURE, dim=-1)
    start = len(row.prompt_ids) - 1
    return [logp[start + i, t].item() for i, t in enumerate(row.reply_ids)]


def test_rows_joining_leaving_and_outgrowing_a_batch_under_two_adapters_keep_their_logprobs(
        base_model_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    torch.manual_seed(3)
    lora = LoraConfig(r=2, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    sha = write_adapter(get_peft_model(AutoModelForCausalLM.from_pretrained(base_model_dir), lora), tmp_path / "v1",
                        "v1", str(base_model_dir))
    model = AutoModelForCausalLM.from_pretrained(base_model_dir).eval()
    adapters = MultiLora(model)
    adapters.add("v1", prepare(model, read_verified(tmp_path / "v1", "v1", str(base_model_dir), adapters_dir=tmp_path,
                                                    expected_sha256=sha)))
    version: dict[int, str | None] = {}
    finished: list[Row] = []

    def new(text: str, tokens: int, under: str | None) -> Row:
        row = Row(prompt(tokenizer, text), tokens)
        version[id(row)] = under
        return row

    def route(rows: list[Row]) -> None:
        adapters.route([version[id(r)] for r in rows])

    def join(rows: list[Row]) -> Batch:
        route(rows)
        return Batch.prefill(model, rows, tokenizer.pad_token_id, NEVER, TEMPERATURE)

    def steps(batch: Batch, n: int) -> None:
        for _ in range(n):
            if not batch.rows:
                return
            route(batch.rows)
            batch.step(model, NEVER, TEMPERATURE)
            finished.extend(batch.drop_done())

    with torch.inference_mode():
        long_question = "I ordered a tent and two jackets last week and only the tent arrived. " * 2
        batch = join([new(long_question, 4, "v1"), new("Hi", 140, None), new("Where is my order?", 40, "v1")])
        steps(batch, 5)  # the long row leaves: the short rows move up, the window's padding goes
        assert len(batch) == 2 and batch.cache.start > 0
        batch.merge(join([new("How do I return a jacket that does not fit me?", 30, None)]))  # wider than the window
        reader = new("Do you ship to Canada?", 8, "v1")  # joins without a prefill: reads its prompt step by step
        batch.merge(Batch.join([reader]))
        steps(batch, 3)
        batch.merge(join([new(long_question * 2, 20, "v1"), new("Thanks", 12, "v1")]))  # needs new buffers
        steps(batch, 200)  # the first row outgrows the columns its batch had room for
    assert len(batch) == 0 and len(finished) == 7
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model_dir), str(tmp_path / "v1")).eval()
    base = AutoModelForCausalLM.from_pretrained(base_model_dir).eval()
    for row in finished:
        assert len(row.reply_ids) == row.max_new_tokens and not row.error
        assert row.logprobs == pytest.approx(replay(policy if version[id(row)] else base, row), abs=1e-4)
    with_adapter = next(r for r in finished if version[id(r)])
    assert with_adapter.logprobs != pytest.approx(replay(base, with_adapter), abs=1e-3)


def test_sampling_follows_the_distribution_and_flags_non_finite_rows() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([[0.5, 0.3, 0.2, 1.0]]).log().repeat(20000, 1)
    logits[:, 3] = -1e4  # finite, and probability 0 after the softmax
    logits[0, 1] = float("nan")
    tokens, logprobs, ok = sample(logits, temperature=1.0)
    assert not ok[0] and ok[1:].all()
    counts = torch.bincount(tokens[1:], minlength=4).float() / (len(tokens) - 1)
    assert counts.tolist() == pytest.approx([0.5, 0.3, 0.2, 0.0], abs=0.015)
    assert torch.allclose(logprobs[1:], torch.log(torch.tensor([0.5, 0.3, 0.2]))[tokens[1:]])


def test_a_prompt_that_starts_like_an_earlier_one_takes_its_keys_and_values(base_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir).eval()
    system = {"role": "system", "content": "You are the support assistant of Northwind Outfitters."}

    def chat(text: str) -> list[int]:
        rendered = tokenizer.apply_chat_template([system, {"role": "user", "content": text}],
                                                 add_generation_prompt=True, tokenize=False)
        return tokenizer(rendered, add_special_tokens=False).input_ids

    torch.manual_seed(5)
    with torch.inference_mode():
        first = Row(chat("Where is my order?"), 4)
        earlier = Batch.prefill(model, [first], tokenizer.pad_token_id, NEVER, TEMPERATURE).cache.cached_prompt(
            0, first.prompt_ids)
        rows = [Row(chat("How do I return a jacket?"), 12), Row(chat("Where is my order?"), 12),
                Row(prompt(tokenizer, "Hi"), 12)]
        shared = [earlier.shared(r.prompt_ids) for r in rows]
        assert shared[0] > 10 and shared[1] == len(first.prompt_ids) - 1 and shared[2] == 0
        batch = Batch.prefill(model, rows, tokenizer.pad_token_id, NEVER, TEMPERATURE, [earlier, earlier, None])
        reader = Row(chat("Can I change my address?"), 12)
        batch.merge(Batch.join([reader], [earlier]))  # reads only what it does not share with the earlier prompt
        for _ in range(len(reader.prompt_ids) - shared[0] + 11):
            batch.step(model, NEVER, TEMPERATURE)
            batch.drop_done()
    assert len(batch) == 0
    for row in [*rows, reader]:
        assert row.logprobs == pytest.approx(replay(model, row), abs=1e-4)


def test_newcomers_read_their_prompts_through_a_streaming_batchs_steps(base_model_dir: Path, monkeypatch) -> None:
    """While a reply streams, short newcomers join without a prefill pass; every reply keeps its log-probs."""
    from bot.runtime import batching
    from bot.runtime.worker import GenerationWorker, Request

    joined: list[int] = []
    join = batching.Batch.join.__func__
    monkeypatch.setattr(batching.Batch, "join", classmethod(
        lambda cls, rows, earlier=None: (joined.append(len(rows)), join(cls, rows, earlier))[1]))
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir).eval()
    worker = GenerationWorker(model, tokenizer.pad_token_id, NEVER, TEMPERATURE, max_batch_size=8,
                              prefix_cache_bytes=2**24)
    worker.start()

    def submit(text: str, tokens: int, stream: bool = False) -> Request:
        request = Request("base", Row(prompt(tokenizer, text), tokens), stream=stream)
        request.row.owner = request
        worker.submit(request)
        return request

    try:
        streaming = submit("Tell me everything about returns.", 60, stream=True)
        assert streaming.events.get(timeout=30) == "token"
        newcomers = [submit(q, 8) for q in ("Tell me everything about refunds.", "Tell me about shipping.")]
        for request in [streaming, *newcomers]:
            while request.events.get(timeout=30) != "done":
                pass
    finally:
        worker.stop()
    assert joined == [2] or joined == [1, 1]
    for request in [streaming, *newcomers]:
        assert not request.row.error and len(request.row.reply_ids) == request.row.max_new_tokens
        assert request.row.logprobs == pytest.approx(replay(model, request.row), abs=1e-4)


def test_the_row_cache_keeps_each_rows_keys_through_moves_shifts_and_growth() -> None:
    """RowCache alone, with random keys and values: what each row attends to stays its own tokens, in order."""
    from bot.runtime.kv_cache import RowCache

    torch.manual_seed(0)
    heads, dim = 2, 3
    own: list[list[torch.Tensor]] = []  # per row: its tokens' keys, oldest first

    def forward(cache: RowCache, columns: int, mask: torch.Tensor | None = None) -> None:
        mask = torch.ones((cache.rows, columns), dtype=torch.long) if mask is None else mask
        cache.attention_mask(mask)
        keys = torch.randn(cache.rows, heads, columns, dim)
        cache.update(keys, keys.clone(), 0)
        cache.advance(columns)
        return keys

    def check(cache: RowCache, rows: list[list[torch.Tensor]]) -> None:
        layer = cache.layers[0]
        assert layer.keys.shape[0] == len(rows) and torch.equal(layer.keys, layer.values)
        for i, tokens in enumerate(rows):
            attended = cache.window_mask()[i].bool()
            assert torch.equal(layer.keys[i][:, attended], torch.stack(tokens, dim=1))
            assert torch.isfinite(layer.keys[i]).all()  # masked cells too: no memory left uninitialised

    cache = RowCache(2, 4)
    keys = forward(cache, 3, torch.tensor([[0, 1, 1], [1, 1, 1]]))  # left-padded prefill
    own = [[keys[0, :, 1], keys[0, :, 2]], [keys[1, :, j] for j in range(3)]]
    check(cache, own)
    for step in range(200):  # decode steps; rows leave and join; the window shifts and grows
        keys = forward(cache, 1)
        for i in range(cache.rows):
            own[i].append(keys[i, :, 0])
        if step % 4 == 3 and cache.rows > 1:  # the oldest row leaves: the window's start moves on
            order = cache.remove([max(range(cache.rows), key=lambda i: len(own[i]))])
            own = [own[i] for i in order]
        if step % 5 == 0:
            newcomer = RowCache(1, 4)
            length = 1 + step % 9
            keys = forward(newcomer, length)
            cache.append(newcomer)
            own.append([keys[0, :, j] for j in range(length)])
        if step % 11 == 0:
            cache.reserve_rows(cache.row_capacity + 1)
        check(cache, own)
