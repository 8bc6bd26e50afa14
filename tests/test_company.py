"""The bundled demo company's data loads, is rich enough, and bad data fails loudly."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from sim.company import DATA_DIR, CompanyDataError, expand_phrasings, load_company


def test_bundled_company_has_enough_intents_phrasings_and_held_out_share() -> None:
    company = load_company()
    assert len(company.intents) >= 12
    for intent in company.intents:
        total = len(intent.phrasings) + len(intent.held_out)
        assert len(intent.phrasings) >= 20, intent.name
        assert len(intent.held_out) / total >= 0.25, intent.name
    assert company.shop.name in company.shop.system_prompt
    assert len(company.personas) >= 4


def test_canonical_replies_state_key_facts_and_no_wrong_ones() -> None:
    for intent in load_company().intents:
        assert intent.missing_facts(intent.canonical_reply) == []
        assert intent.wrong_facts_in(intent.canonical_reply) == []
        assert intent.missing_facts(intent.canonical_follow_up_reply, follow_up=True) == []
        assert intent.wrong_facts_in(intent.canonical_follow_up_reply, follow_up=True) == []


def test_wrong_fact_answers_miss_a_key_fact_and_are_detected() -> None:
    rng = random.Random(1)
    for intent in load_company().intents:
        for template in intent.answers:
            wrong = intent.fill(template, rng)
            assert intent.missing_facts(wrong), wrong
            assert intent.wrong_facts_in(wrong), wrong


def _broken_copy(tmp_path: Path, edit) -> Path:
    directory = tmp_path / "northwind"
    shutil.copytree(DATA_DIR, directory)
    intents = json.loads((directory / "intents.json").read_text())
    edit(intents)
    (directory / "intents.json").write_text(json.dumps(intents))
    return directory


def test_answer_missing_its_key_fact_is_rejected_with_the_reason(tmp_path: Path) -> None:
    def edit(intents: list[dict]) -> None:
        intents[0]["key_facts"].append("free unicorn")

    with pytest.raises(CompanyDataError, match="misses its key facts.*free unicorn"):
        load_company(_broken_copy(tmp_path, edit))


def test_held_out_phrasing_reused_for_training_is_rejected(tmp_path: Path) -> None:
    def edit(intents: list[dict]) -> None:
        intents[1]["phrasings"].append(load_company().intents[0].held_out[0])

    with pytest.raises(CompanyDataError, match="appears twice"):
        load_company(_broken_copy(tmp_path, edit))


def test_phrasing_templates_expand_over_every_slot_value(tmp_path: Path) -> None:
    assert expand_phrasings(["Where is my {thing}?", "hi"], {"thing": ["order", "parcel"]}) == [
        "Where is my order?", "Where is my parcel?", "hi"]
    assert expand_phrasings(["{a} {b}"], {"a": ["1", "2"], "b": ["x", "y"]}) == ["1 x", "1 y", "2 x", "2 y"]

    def edit(intents: list[dict]) -> None:
        intents[0]["phrasings"].append("Where is my {gadget}?")

    with pytest.raises(CompanyDataError, match="unknown slots.*gadget"):
        load_company(_broken_copy(tmp_path, edit))


def test_unknown_fact_and_missing_file_are_reported(tmp_path: Path) -> None:
    def edit(intents: list[dict]) -> None:
        intents[2]["answers"][0] += " Call {phone}."

    with pytest.raises(CompanyDataError, match="unknown facts.*phone"):
        load_company(_broken_copy(tmp_path, edit))
    with pytest.raises(CompanyDataError, match="personas.json is missing"):
        (tmp_path / "northwind" / "personas.json").unlink()
        load_company(tmp_path / "northwind")
