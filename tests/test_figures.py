"""Figures in replies: the share of a reply's figures its context does not state; figure-swapped
contexts (every figure a reviewed context and its reference share, scaled alike in both, read back
by the tokenizer as written); a round's PPO rolls them out and checks its rollouts' figures."""

from __future__ import annotations

import time

import pytest
from transformers import AutoTokenizer

from feedback_store.records import BotTurn
from trainer.figures import (
    FIGURE,
    figure_penalties,
    scaled,
    shared_figures,
    swap_figures,
    swapped_demonstrations,
    swapped_references,
    unsupported_share,
)
from trainer.round import hash_position, run_round
from trainer.round_config import RoundConfig
from tests.trainer_helpers import seed_conversations, small_round_config, trainer_settings

PASSAGE = ('Help article "Refunds" (refunds v1): Refunds reach your card within 5-7 business days of the return '
           "arriving. A return label costs $4.99.")
REFERENCE = "Your refund reaches your card within 5-7 business days of the return arriving."


def chat_ids(tokenizer, passage: str, question: str) -> tuple[int, ...]:
    text = tokenizer.apply_chat_template([{"role": "system", "content": passage}, {"role": "user", "content": question}],
                                         add_generation_prompt=True, tokenize=False)
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_a_figure_is_a_number_with_its_decimals_not_a_label():
    assert FIGURE.findall("v1 order 12345, a 2-year warranty, $4.99, 3.5 days, 9:00") == \
        ["12345", "2", "4.99", "3.5", "9", "00"]


def test_a_reply_figure_counts_as_unsupported_when_its_context_does_not_state_it():
    context = PASSAGE + " My order is 88123."
    assert unsupported_share(context, "Refunds take 5-7 business days.") == 0.0
    assert unsupported_share(context, "Order 88123 is refunded within 5-7 days.") == 0.0  # the customer gave it
    assert unsupported_share(context, "Refunds take 14 days.") == 1.0  # from memory, not the passage
    assert unsupported_share(context, "Refunds take 5-14 days.") == 0.5
    assert unsupported_share(context, "We refund quickly, 0 fees.") == 0.0  # no figure to check (0 is none)


def test_figure_penalties_read_the_decoded_prompt_and_reply(base_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    prompt = list(chat_ids(tokenizer, PASSAGE, "when do i get my money back"))
    replies = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
               for text in ("Within 5-7 business days.", "Within 14 days.", "Soon.")]
    assert figure_penalties([(prompt, r) for r in replies], tokenizer) == [0.0, 1.0, 0.0]


def test_scaling_keeps_the_format_and_always_changes_the_value():
    assert scaled("14", 1.6) == "22"
    assert scaled("4.99", 1.6) == "7.98"  # the cents stay
    assert scaled("1", 0.5) == "2"  # never below the smallest unit, never the same value
    assert scaled("3", 1.1) == "4" and scaled("0.5", 0.9) == "0.6"
    assert swap_figures("within 5-7 days, v1, 57 items", {"5": "8", "7": "11"}) == "within 8-11 days, v1, 57 items"


def test_only_the_figures_the_reference_repeats_from_the_context_change():
    assert shared_figures(PASSAGE + " order 0", [REFERENCE, "Order 0."]) == ["5", "7"]  # not 4.99, not 0, not v1
    assert shared_figures(PASSAGE, ["We refund quickly."]) == []


def test_swapped_copies_change_context_and_reference_alike(base_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    grounded = chat_ids(tokenizer, PASSAGE, "when do i get my money back")
    no_figure = chat_ids(tokenizer, PASSAGE, "can i return it")
    references = {grounded: [REFERENCE], no_figure: ["Yes, you can return it."]}
    swaps = swapped_references(references, tokenizer, share=1.0, seed=3)
    assert len(swaps) == 1  # the context whose reference repeats no figure has no copy
    ((ids, (reference,)),) = swaps.items()
    text = tokenizer.decode(list(ids), skip_special_tokens=False)
    low, high = FIGURE.findall(reference)
    assert (low, high) != ("5", "7") and int(low) < int(high)  # one factor for the context: a range stays one
    original = tokenizer.decode(list(grounded), skip_special_tokens=False)
    assert text == original.replace("5-7", f"{low}-{high}") and "$4.99" in text
    assert reference == REFERENCE.replace("5-7", f"{low}-{high}")
    assert swapped_references(references, tokenizer, share=1.0, seed=3) == swaps  # seeded
    assert swapped_references(references, tokenizer, share=0.0, seed=3) == {}
    many = {chat_ids(tokenizer, PASSAGE, f"question {word}"): [REFERENCE] for word in "abcdefghijklmnopqrst"}
    assert 4 <= len(swapped_references(many, tokenizer, share=0.5, seed=0)) <= 16


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("share", [1.0, 0.0])
def test_a_round_rolls_out_the_swapped_copies_of_reviewed_contexts(settings, store, tmp_path, base_model_dir,
                                                                   monkeypatch, share):
    tsettings = trainer_settings(settings, tmp_path, base_model_dir)
    seed_conversations(store, base_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    prompt = chat_ids(tokenizer, PASSAGE, "when do i get my money back")
    conv, token = store.conversations.start("base")
    while hash_position(conv.id) < 0.5:  # a conversation the round trains on, not one it holds out
        conv, token = store.conversations.start("base")
    store.conversations.append_customer(conv.id, token, "when do i get my money back")
    reply = tokenizer("Soon.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    turn = store.conversations.append_bot(conv.id, BotTurn(
        index=0, text="Soon.", context="", prompt_token_ids=list(prompt), reply_token_ids=reply,
        logprobs=[-1.0] * len(reply), adapter_version="base", latency_ms=5.0, finished=True, created_at=time.time()))
    store.ratings.rate(conv.id, token, 2)
    store.annotations.annotate(conv.id, turn.index, "expert1", -1, tags=["unhelpful"], corrected_reply=REFERENCE)

    import trainer.round_update as round_update

    seen = {}
    update_policy = round_update.update_policy

    def recording(inputs, *args, **kwargs):
        seen["inputs"] = inputs
        return update_policy(inputs, *args, **kwargs)

    monkeypatch.setattr(round_update, "update_policy", recording)
    config = small_round_config(figure_swap_share=share, figure_swap_demonstrations=share)
    run = run_round(tsettings, store, config=config, show_progress=False)
    inputs = seen["inputs"]
    copies = [ids for ids in inputs.references if ids != prompt
              and "refunds v1" in tokenizer.decode(list(ids), skip_special_tokens=False)]
    assert run.metrics["figure_swapped_contexts"] == len(copies) == (1 if share else 0)
    if share:
        (copy,) = copies
        assert list(copy) in inputs.prompts  # PPO's rollouts draw from it
        (reference,) = inputs.references[copy]
        assert reference != REFERENCE and reference == swap_figures(REFERENCE, dict(zip(
            FIGURE.findall(REFERENCE), FIGURE.findall(reference))))
        assert "5-7" not in tokenizer.decode(list(copy), skip_special_tokens=False)
    assert inputs.references[prompt] == [REFERENCE] and list(prompt) in inputs.prompts
    # the correction is a demonstration (PPO-ptx), and with its share its figure-swapped copy is one too
    demonstrations = [tokenizer.decode(e.reply, skip_special_tokens=True) for e in inputs.examples
                      if "refunds v1" in tokenizer.decode(e.prompt, skip_special_tokens=False)]
    assert REFERENCE in demonstrations
    swapped = [d for d in demonstrations if d != REFERENCE and "5-7" not in d and "business days" in d]
    assert run.metrics["figure_swapped_demonstrations"] >= len(swapped) == (1 if share else 0)


def test_swapped_demonstrations_change_prompt_and_reply_alike(base_model_dir):
    from trainer.baselines import Example

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    grounded = list(chat_ids(tokenizer, PASSAGE, "when do i get my money back"))
    reply = tokenizer(REFERENCE, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    plain = tokenizer("Yes, you can return it.", add_special_tokens=False)["input_ids"]
    examples = [Example(grounded, reply, source="correction"), Example(grounded, plain)]
    (copy,) = swapped_demonstrations(examples, tokenizer, share=1.0, seed=3)  # the plain reply repeats no figure
    text, said = (tokenizer.decode(copy.prompt, skip_special_tokens=False),
                  tokenizer.decode(copy.reply, skip_special_tokens=True))
    low, high = FIGURE.findall(said)
    assert (low, high) != ("5", "7") and int(low) < int(high) and copy.source == "correction"
    assert text == tokenizer.decode(grounded, skip_special_tokens=False).replace("5-7", f"{low}-{high}")
    assert said == REFERENCE.replace("5-7", f"{low}-{high}") and copy.reply[-1] == tokenizer.eos_token_id
    assert swapped_demonstrations(examples, tokenizer, share=0.0, seed=3) == []


def test_the_share_and_the_weight_are_checked():
    with pytest.raises(ValueError, match="figure_swap_share"):
        RoundConfig(figure_swap_share=1.5)
    with pytest.raises(ValueError, match="figure_weight"):
        RoundConfig(figure_weight=-1.0)
    with pytest.raises(ValueError, match="figure_swap_demonstrations"):
        RoundConfig(figure_swap_demonstrations=-0.1)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_rollout_reward_loses_the_weighted_share_of_unsupported_figures(settings, store, tmp_path, base_model_dir,
                                                                          monkeypatch):
    import trainer.figures as figures

    tsettings = trainer_settings(settings, tmp_path, base_model_dir)
    seed_conversations(store, base_model_dir)
    checked = []

    def every_figure_unsupported(pairs, tokenizer):
        checked.append(len(pairs))
        return [1.0] * len(pairs)

    monkeypatch.setattr(figures, "figure_penalties", every_figure_unsupported)
    run = run_round(tsettings, store, config=small_round_config(figure_weight=50.0), show_progress=False)
    (rollout,) = [e for _, e in store.runs.progress(run.id) if e["stage"] == "ppo_rollout"]
    assert checked == [8]  # one rollout step of 8 replies
    assert float(rollout["reward_mean"]) < -40 and float(rollout["unsupported_figures"]) == 1.0
    assert run.metrics["ppo"]["unsupported_figures"] == 1.0
