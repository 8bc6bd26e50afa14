"""``bench/knowledge.py`` at test size on the test-size model: through the real running bot, every
edit and the new article are live within 2 s, the demo shop's questions find their article in the
top 3, every out-of-scope question retrieval turns away gets the bot's decline, and the bot's
retrieval is timed on the large knowledge base it imported."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.knowledge import ask, bench_bot, run, table
from sim.company import load_company
from sim.knowledge import load_evaluation, out_of_scope_questions

pytestmark = pytest.mark.slow


def test_the_knowledge_bench_measures_a_running_bot(base_model_dir: Path, one_torch_thread):
    figures = {f.name: f for f in run(base_model_dir, per_intent=2, concurrency=4, articles=120, max_reply_tokens=8)}
    print(table(list(figures.values())))
    intents = len(load_company().intents)
    assert figures["held-out: on the asked article"].n == 2 * intents
    for name in ("edit: save to live index, slowest", "new article: create to live index",
                 "import to live index at 121 articles"):
        assert 0 < figures[name].value < 2.0, figures[name]
    assert figures["edit: replies with the new value"].n == 2 * len(load_evaluation().edits)
    assert figures["retrieval: expected article in top 3"].value >= 0.95
    timed = figures["retrieval at 121 articles, p99, bot idle"]
    assert timed.value > 0 and timed.n == 3 * sum(len(i.phrasings + i.held_out) for i in load_company().intents)
    declined = figures["out of scope: declined or referred"]
    turned_away = figures["out of scope: turned away by retrieval"]
    assert declined.n == len(out_of_scope_questions() + out_of_scope_questions(held_out=True))
    assert 0 < turned_away.value < 1
    assert declined.value >= turned_away.value  # what retrieval turns away gets the fixed decline


@pytest.fixture(scope="module")
def trained_adapter(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter directory as PPO saves it (LoRA and value head), with the manifest naming its base."""
    from transformers import AutoModelForCausalLM

    from loopdesk.adapter_format import write_manifest
    from trainer.config import PPOConfig
    from trainer.policy import PolicyWithValueHead

    path = tmp_path_factory.mktemp("trained-adapter")
    PolicyWithValueHead.with_new_adapter(AutoModelForCausalLM.from_pretrained(base_model_dir),
                                         PPOConfig()).save_pretrained(path)
    write_manifest(path, "v0007", str(base_model_dir), "base")
    return path


def test_the_knowledge_bench_serves_the_adapter_it_is_given(base_model_dir: Path, trained_adapter: Path,
                                                             one_torch_thread):
    with bench_bot(base_model_dir, concurrency=2, adapter=trained_adapter, max_reply_tokens=4) as bot:
        ask(bot, ["Where is my order?", "How do I get a refund?"])
        served = bot.store.adapters.active()
        assert served != "base"
        assert Path(bot.store.adapters.get(served).path).parent == Path(bot.settings.adapters_dir)
        assert len(bot.store.conversations.for_adapter(served)) == 2
        assert bot.store.conversations.for_adapter("base") == []


def test_the_knowledge_bench_refuses_an_adapter_of_another_base(base_model_dir: Path, trained_adapter: Path,
                                                                tmp_path: Path):
    other = tmp_path / "other-base"
    other.mkdir()
    with pytest.raises(SystemExit, match="was trained on"):
        with bench_bot(other, adapter=trained_adapter):
            pass
