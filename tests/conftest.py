"""Shared fixtures: one real embedded Redis per test session (each test gets its own key
prefix), the test-size real model built once per session, a headless Chromium per module, and
one torch thread for the tests that train tiny models."""

from __future__ import annotations

import ast
import sys
import threading
import uuid
from pathlib import Path

import pytest

from feedback_store import FeedbackStore
from feedback_store.server import ensure_embedded_redis, stop_embedded_redis
from loopdesk.config import Settings, load_settings

if sys.version_info[:2] == (3, 11) and sys.version_info < (3, 11, 8):
    # CPython before 3.11.8 keeps ast.parse's recursion counter in one place for every thread, so two
    # threads parsing at once fail with "AST constructor recursion depth mismatch" (gh-106905). A
    # background thread formatting a logged traceback parses (the caret lines) while hypothesis parses
    # a test's lambdas: one parse at a time in the test process.
    _parse = ast.parse
    _parsing = threading.RLock()

    def _one_parse_at_a_time(*args, **kwargs):
        with _parsing:
            return _parse(*args, **kwargs)

    ast.parse = _one_parse_at_a_time


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory whose embedded Redis runs for the whole session."""
    directory = tmp_path_factory.mktemp("var")
    ensure_embedded_redis(directory)
    yield directory
    stop_embedded_redis(directory)


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    """Settings on the session's Redis under a key prefix of this test's own."""
    return load_settings({}, data_dir=data_dir, key_prefix=f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def store(settings: Settings) -> FeedbackStore:
    return FeedbackStore.from_settings(settings, announce=False)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def browser():
    """A headless Debian Chromium per test module, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser):
    """Pages in fresh contexts (``new_page()``); they must run without a script error or
    Content-Security-Policy violation."""
    from tests.web_helpers import watch_csp

    contexts, problems, csp_violations = [], [], []

    def open_page():
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        watch_csp(context, csp_violations)
        page = context.new_page()
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert problems == [] and csp_violations == []


@pytest.fixture
def one_torch_thread():
    """Tiny models run ~10x faster on one thread when the cores are busy (threads spin)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test-size tiny base model (tokenizer with chat template + Llama), built in seconds."""
    from sim.bootstrap import build_base_model

    return build_base_model(tmp_path_factory.mktemp("models") / "base", size="test", progress=False)


@pytest.fixture(scope="session")
def family_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """``family_model_dir(name)``: the test-size model of another architecture (``tests/model_families``),
    built in about a second on first use."""
    from tests.model_families import build_family

    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_family(name, tmp_path_factory.mktemp("families") / name)
        return built[name]

    return get
