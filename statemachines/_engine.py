"""Fire one trigger on a shared `transitions` machine for one per-event model, never raising."""

from __future__ import annotations

import logging
from typing import Any

from transitions import Machine, MachineError

# Its INFO and DEBUG lines are built per callback; below WARNING they are not even formatted.
logging.getLogger("transitions").setLevel(logging.WARNING)


def build(states: list[str], transitions: list[dict[str, Any]]) -> Machine:
    """One machine per definition, shared by all models: each event fires on its own model."""
    return Machine(
        model=None,
        states=states,
        transitions=transitions,
        initial=states[0],
        auto_transitions=False,  # no `to_<state>()` back doors around the guards
    )


def fire(machine: Machine, model: Any, state: str, trigger: str) -> str | None:
    """Run `trigger` on `model` from `state`; None if it fired, else why it was refused."""
    state = str(state)  # a StrEnum's value; `transitions` would look an Enum up by name
    if state not in machine.states:
        return f"unknown state {state!r}"
    if trigger not in machine.events:
        return f"unknown trigger {trigger!r}"
    # The event fires on the model directly: adding and removing the model per event (binding
    # every trigger to it) cost more than the whole rest of routing an event.
    model.state = state
    try:
        fired = machine.events[trigger].trigger(model)
    except MachineError:
        return f"{trigger!r} is not allowed in state {state!r}"
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
