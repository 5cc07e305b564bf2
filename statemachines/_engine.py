"""Fire one trigger on a shared `transitions` machine for one per-event model, never raising."""

from __future__ import annotations

import logging
from typing import Any

from transitions import Machine, MachineError


class _QuietOverride(logging.Filter):
    """Per event, `transitions` logs every callback at INFO and, with `model_override=True`, a
    WARNING for each trigger a model does not declare (ours declare only `trigger`, by design):
    dozens of lines per event. The run record keeps what fired; keep real warnings only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and "model override policy" not in str(record.msg)


logging.getLogger("transitions.core").addFilter(_QuietOverride())


def build(states: list[str], transitions: list[dict[str, Any]]) -> Machine:
    """One machine per definition, shared by all models: models are added per event."""
    return Machine(
        model=None,
        states=states,
        transitions=transitions,
        initial=states[0],
        auto_transitions=False,  # no `to_<state>()` back doors around the guards
        model_override=True,  # bind only the stubs the model declares (keeps mypy honest)
    )


def fire(machine: Machine, model: Any, state: str, trigger: str) -> str | None:
    """Run `trigger` on `model` from `state`; None if it fired, else why it was refused."""
    state = str(state)  # a StrEnum's value; `transitions` would look an Enum up by name
    if state not in machine.states:
        return f"unknown state {state!r}"
    if trigger not in machine.events:
        return f"unknown trigger {trigger!r}"
    machine.add_model(model, initial=state)
    try:
        fired = model.trigger(trigger)
    except MachineError:
        return f"{trigger!r} is not allowed in state {state!r}"
    finally:
        machine.remove_model(model)
    return (
        None
        if fired
        else f"{trigger!r} refused in state {state!r}: {_guards(machine, state, trigger)}"
    )


def _guards(machine: Machine, state: str, trigger: str) -> str:
    """The guards of the rows tried, e.g. `claim_overdue, unless already_reminded`."""
    names: list[str] = []
    for transition in machine.events[trigger].transitions[state]:
        for condition in transition.conditions:
            func = condition.func if isinstance(condition.func, str) else repr(condition.func)
            names.append(func if condition.target else f"unless {func}")
    return "guard not met (" + ", ".join(dict.fromkeys(names)) + ")"
