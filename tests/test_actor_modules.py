"""ACTOR_MODULES: unset, the worker serves the actors shipped with it; set, the ones named."""

from __future__ import annotations

import pytest

from services.worker.app import load_actors
from shared.settings import Settings


@pytest.mark.unit
def test_unset_means_the_shipped_actors() -> None:
    names = {a.name for a in load_actors(Settings.from_env({}))}
    assert {"ask", "distill", "stubborn"} <= names
    assert "limited" not in names  # a test actor, served only when named


@pytest.mark.unit
def test_the_named_modules_replace_the_default() -> None:
    named = Settings.from_env({"ACTOR_MODULES": "tests.actors"})
    names = {a.name for a in load_actors(named)}
    assert "limited" in names and "ask" not in names
