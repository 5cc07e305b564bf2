"""Routing finds the handler of each effect and action kind in a table: none may be missing."""

from __future__ import annotations

from typing import get_args

from router.pipeline.routing import actions, effects
from router.rules.actions import ACTIONS
from statemachines.effects import Effect


def test_every_effect_kind_has_a_handler() -> None:
    assert set(effects.HANDLERS) == set(get_args(Effect))


def test_every_action_kind_has_a_handler() -> None:
    assert set(actions.HANDLERS) == set(ACTIONS)


def test_replayed_actions_are_action_kinds() -> None:
    assert actions.REPLAYED_ACTIONS.issubset(ACTIONS)
