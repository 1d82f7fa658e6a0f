"""A task's life: proposed, accepted, in progress, then completed, or cancelled on the way."""

import pytest

from services.coordinator.care_plan import (
    TRANSITIONS,
    IllegalTransition,
    TaskAction,
    TaskState,
    transition,
)

OPEN = [TaskState.PROPOSED, TaskState.ACCEPTED, TaskState.IN_PROGRESS]


def test_a_task_is_accepted_started_and_completed_in_that_order():
    state = TaskState.PROPOSED
    for action, expected in [
        (TaskAction.ACCEPT, TaskState.ACCEPTED),
        (TaskAction.START, TaskState.IN_PROGRESS),
        (TaskAction.COMPLETE, TaskState.COMPLETED),
    ]:
        state = transition(state, action)
        assert state is expected


@pytest.mark.parametrize("state", OPEN)
def test_an_open_task_can_be_cancelled(state: TaskState):
    assert transition(state, TaskAction.CANCEL) is TaskState.CANCELLED


@pytest.mark.parametrize("state", OPEN)
def test_reassigning_keeps_the_state(state: TaskState):
    assert transition(state, TaskAction.REASSIGN) is state


def test_the_transition_table_holds_exactly_the_legal_moves():
    assert len(TRANSITIONS) == 9
    assert all(state in OPEN for state, _ in TRANSITIONS)


@pytest.mark.parametrize(
    ("state", "action", "reason"),
    [
        (
            "proposed",
            "complete",
            "cannot complete a task that is proposed: accept and start it first",
        ),
        ("proposed", "start", "cannot start a task that is proposed: accept it first"),
        ("accepted", "complete", "cannot complete a task that is accepted: start it first"),
        ("accepted", "accept", "cannot accept a task that is accepted: it is accepted already"),
        (
            "in_progress",
            "start",
            "cannot start a task that is in_progress: it is under way already",
        ),
        (
            "in_progress",
            "accept",
            "cannot accept a task that is in_progress: it is under way already",
        ),
    ],
)
def test_an_out_of_order_action_is_refused_saying_what_to_do(state, action, reason):
    with pytest.raises(IllegalTransition) as refused:
        transition(TaskState(state), TaskAction(action))
    assert str(refused.value) == reason


@pytest.mark.parametrize("state", [TaskState.COMPLETED, TaskState.CANCELLED])
@pytest.mark.parametrize("action", list(TaskAction))
def test_a_closed_task_takes_no_action(state: TaskState, action: TaskAction):
    with pytest.raises(
        IllegalTransition, match=f"cannot {action} a task that is {state}: it is closed"
    ):
        transition(state, action)


def test_a_state_or_action_given_as_text_is_accepted_and_unknown_ones_refused():
    assert transition("accepted", "start") is TaskState.IN_PROGRESS
    with pytest.raises(IllegalTransition, match="`approve` is not an action"):
        transition("proposed", "approve")
    with pytest.raises(IllegalTransition, match="`draft` is not a task state"):
        transition("draft", "accept")
