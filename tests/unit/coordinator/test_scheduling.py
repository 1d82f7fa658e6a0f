"""Scheduling a care plan's tasks on the team's calendar: prerequisites, capacity, working days,
priority and due dates, deterministically."""

from collections import Counter
from dataclasses import replace
from datetime import date, timedelta

import pytest
from coordinator_samples import MONDAY, person, roster, task
from hypothesis import given, settings
from hypothesis import strategies as st

from services.coordinator.care_plan import TaskState
from services.coordinator.scheduling import (
    Roster,
    SchedulingTask,
    Slot,
    iso_week,
    load_roster,
    schedule,
)
from services.coordinator.templates import Priority, Role

SPECIALIST = person("specialist-a", Role.PAIN_SPECIALIST)
TUESDAY, WEDNESDAY, FRIDAY = (MONDAY + timedelta(days=n) for n in (1, 2, 4))
NEXT_MONDAY = MONDAY + timedelta(days=7)


def test_a_task_is_placed_today_with_the_one_person_of_its_role():
    slots = schedule([task("t1")], roster(SPECIALIST), MONDAY)
    assert slots == {"t1": Slot(date=MONDAY, assignee="specialist-a", late=False)}
    assert slots["t1"].scheduled


def test_a_task_is_never_placed_before_today():
    created_long_ago = task("t1", created=MONDAY - timedelta(days=60), due_days=90)
    assert schedule([created_long_ago], roster(SPECIALIST), WEDNESDAY)["t1"].date == WEDNESDAY


def test_a_dependant_comes_the_day_after_its_prerequisite_along_the_chain():
    chain = [
        task("screening", Role.PAIN_PSYCHOLOGIST),
        task("trial", Role.INTERVENTIONALIST, prerequisites=["screening"]),
        task("implant", Role.INTERVENTIONALIST, prerequisites=["trial"]),
    ]
    team = roster(
        person("psychologist", Role.PAIN_PSYCHOLOGIST),
        person("interventionalist", Role.INTERVENTIONALIST),
    )
    slots = schedule(chain, team, MONDAY)
    assert [slots[t].date for t in ("screening", "trial", "implant")] == [
        MONDAY,
        TUESDAY,
        WEDNESDAY,
    ]


def test_a_completed_prerequisite_holds_its_dependant_until_it_was_done():
    done = task("conference", Role.CARE_COORDINATOR, state=TaskState.COMPLETED, done_on=WEDNESDAY)
    slots = schedule([done, task("t1", prerequisites=["conference"])], roster(SPECIALIST), MONDAY)
    assert slots == {"t1": Slot(date=WEDNESDAY, assignee="specialist-a", late=False)}


def test_completed_and_cancelled_tasks_get_no_slot_and_a_cancelled_prerequisite_holds_nothing():
    tasks = [
        task("done", state=TaskState.COMPLETED, done_on=MONDAY - timedelta(days=3)),
        task("dropped", state=TaskState.CANCELLED),
        task("t1", prerequisites=["dropped"]),
    ]
    assert schedule(tasks, roster(SPECIALIST), MONDAY) == {
        "t1": Slot(date=MONDAY, assignee="specialist-a", late=False)
    }


def test_a_person_never_gets_more_tasks_in_a_week_than_their_capacity():
    specialist = person("specialist-a", Role.PAIN_SPECIALIST, weekly_capacity=2)
    slots = schedule([task(f"t{n}") for n in range(5)], roster(specialist), MONDAY)
    weeks = Counter(iso_week(slot.date) for slot in slots.values())
    assert weeks == {
        iso_week(MONDAY): 2,
        iso_week(NEXT_MONDAY): 2,
        iso_week(NEXT_MONDAY + timedelta(days=7)): 1,
    }
    assert [slots[f"t{n}"].date for n in range(5)] == [
        MONDAY,
        MONDAY,
        NEXT_MONDAY,
        NEXT_MONDAY,
        NEXT_MONDAY + timedelta(days=7),
    ]


def test_slots_already_booked_count_against_the_week():
    specialist = person("specialist-a", Role.PAIN_SPECIALIST, weekly_capacity=3)
    booked = {("specialist-a", iso_week(MONDAY)): 3}
    slots = schedule([task("t1")], roster(specialist), MONDAY, booked)
    assert slots["t1"].date == NEXT_MONDAY


def test_tasks_are_placed_only_on_working_days():
    interventionalist = person("interventionalist", Role.INTERVENTIONALIST, 10, ["tue", "thu"])
    slots = schedule(
        [
            task("block", Role.INTERVENTIONALIST),
            task("rfa", Role.INTERVENTIONALIST, prerequisites=["block"]),
        ],
        roster(interventionalist),
        MONDAY,
    )
    assert (slots["block"].date, slots["rfa"].date) == (TUESDAY, TUESDAY + timedelta(days=2))
    assert slots["block"].date.strftime("%a") == "Tue"


def test_urgent_tasks_go_before_routine_ones_whatever_the_due_date():
    specialist = person("specialist-a", Role.PAIN_SPECIALIST, weekly_capacity=1)
    routine = task("a-routine", due_days=3)
    urgent = task("z-urgent", priority=Priority.URGENT, due_days=10)
    slots = schedule([routine, urgent], roster(specialist), MONDAY)
    assert slots["z-urgent"] == Slot(date=MONDAY, assignee="specialist-a", late=False)
    assert slots["a-routine"] == Slot(date=NEXT_MONDAY, assignee="specialist-a", late=True)


def test_stat_goes_before_asap_before_urgent():
    specialist = person("specialist-a", Role.PAIN_SPECIALIST, weekly_capacity=1)
    tasks = [
        task("a", priority=Priority.URGENT),
        task("b", priority=Priority.ASAP),
        task("c", priority=Priority.STAT),
    ]
    slots = schedule(tasks, roster(specialist), MONDAY)
    assert [slots[t].date for t in ("c", "b", "a")] == [
        MONDAY,
        NEXT_MONDAY,
        NEXT_MONDAY + timedelta(days=7),
    ]


def test_among_equals_the_earlier_due_date_goes_first_then_the_task_id():
    specialist = person("specialist-a", Role.PAIN_SPECIALIST, weekly_capacity=1)
    tasks = [task("a", due_days=20), task("b", due_days=10), task("c", due_days=10)]
    slots = schedule(tasks, roster(specialist), MONDAY)
    assert [slots[t].date for t in ("b", "c", "a")] == [
        MONDAY,
        NEXT_MONDAY,
        NEXT_MONDAY + timedelta(days=7),
    ]


def test_a_routine_prerequisite_of_an_urgent_task_goes_ahead_of_other_routine_work():
    specialist = person("specialist-a", Role.PAIN_SPECIALIST, weekly_capacity=1)
    tasks = [
        task("a-other", due_days=5),
        task("m-prerequisite", due_days=30),
        task("z-urgent", priority=Priority.URGENT, due_days=14, prerequisites=["m-prerequisite"]),
    ]
    slots = schedule(tasks, roster(specialist), MONDAY)
    assert slots["m-prerequisite"].date == MONDAY
    assert slots["z-urgent"].date == NEXT_MONDAY


def test_due_dates_are_met_when_capacity_allows():
    team = roster(
        person("specialist-a", Role.PAIN_SPECIALIST, weekly_capacity=2),
        person("specialist-b", Role.PAIN_SPECIALIST, weekly_capacity=2),
    )
    slots = schedule([task(f"t{n}", due_days=7) for n in range(4)], team, MONDAY)
    assert all(slot.date == MONDAY and not slot.late for slot in slots.values())


def test_a_task_pushed_past_its_due_date_by_capacity_is_flagged_late():
    specialist = person("specialist-a", Role.PAIN_SPECIALIST, weekly_capacity=1)
    slots = schedule([task("a", due_days=5), task("b", due_days=5)], roster(specialist), MONDAY)
    assert (slots["a"].late, slots["b"].late) == (False, True)
    assert slots["b"].date == NEXT_MONDAY


def test_a_task_pushed_past_its_due_date_by_a_prerequisite_is_flagged_late():
    team = roster(SPECIALIST, person("pt", Role.PHYSICAL_THERAPIST, working_days=["fri"]))
    tasks = [
        task("exam", due_days=10),
        task("therapy", Role.PHYSICAL_THERAPIST, due_days=3, prerequisites=["exam"]),
    ]
    slots = schedule(tasks, team, MONDAY)
    assert slots["therapy"] == Slot(date=FRIDAY, assignee="pt", late=True)


def test_the_person_with_most_capacity_left_that_week_is_chosen_tie_by_id():
    team = roster(
        person("specialist-b", Role.PAIN_SPECIALIST, weekly_capacity=3),
        person("specialist-a", Role.PAIN_SPECIALIST, weekly_capacity=3),
        person("specialist-c", Role.PAIN_SPECIALIST, weekly_capacity=5),
    )
    booked = {("specialist-c", iso_week(MONDAY)): 3}
    slots = schedule([task("t1"), task("t2"), task("t3")], team, MONDAY, booked)
    assert [slots[t].assignee for t in ("t1", "t2", "t3")] == [
        "specialist-a",
        "specialist-b",
        "specialist-a",
    ]


def test_a_fixed_assignee_is_kept_even_when_someone_else_is_freer():
    team = roster(
        person("specialist-a", Role.PAIN_SPECIALIST, weekly_capacity=20),
        person("specialist-b", Role.PAIN_SPECIALIST, weekly_capacity=1, working_days=["wed"]),
    )
    slots = schedule([task("t1", assignee="specialist-b")], team, MONDAY)
    assert slots["t1"] == Slot(date=WEDNESDAY, assignee="specialist-b", late=False)


def test_a_late_prerequisite_moves_its_dependants_when_scheduled_again():
    team = roster(
        person("coordinator", Role.CARE_COORDINATOR),
        person("psychologist", Role.PAIN_PSYCHOLOGIST),
    )
    conference = task("conference", Role.CARE_COORDINATOR, priority=Priority.URGENT, due_days=7)
    intake = task("intake", Role.PAIN_PSYCHOLOGIST, due_days=28, prerequisites=["conference"])
    first = schedule([conference, intake], team, MONDAY)
    assert (first["conference"].date, first["intake"].date) == (MONDAY, TUESDAY)

    finished_late = task(
        "conference",
        Role.CARE_COORDINATOR,
        priority=Priority.URGENT,
        due_days=7,
        state=TaskState.COMPLETED,
        done_on=FRIDAY,
    )
    again = schedule([finished_late, intake], team, WEDNESDAY)
    assert again == {"intake": Slot(date=FRIDAY, assignee="psychologist", late=False)}


def test_a_prerequisite_still_open_after_its_day_moves_its_dependants_along():
    team = roster(person("coordinator", Role.CARE_COORDINATOR), SPECIALIST)
    tasks = [
        task("conference", Role.CARE_COORDINATOR, state=TaskState.IN_PROGRESS),
        task("exam", prerequisites=["conference"]),
    ]
    assert schedule(tasks, team, MONDAY)["exam"].date == TUESDAY
    assert schedule(tasks, team, WEDNESDAY)["exam"].date == WEDNESDAY + timedelta(days=1)


def test_a_role_nobody_holds_gets_no_slot_and_so_do_its_dependants():
    tasks = [
        task("therapy", Role.PHYSICAL_THERAPIST),
        task("review", prerequisites=["therapy"]),
        task("exam"),
    ]
    slots = schedule(tasks, roster(SPECIALIST), MONDAY)
    assert slots["therapy"] == Slot(
        date=None, assignee=None, late=False, problem="no physical_therapist in the roster"
    )
    assert slots["review"] == Slot(
        date=None, assignee=None, late=False, problem="waits on therapy, which has no slot"
    )
    assert not slots["review"].scheduled
    assert slots["exam"].assignee == "specialist-a"


def test_an_assignee_not_in_the_roster_or_an_unknown_prerequisite_is_reported():
    slots = schedule(
        [task("t1", assignee="locum"), task("t2", prerequisites=["t9"])], roster(SPECIALIST), MONDAY
    )
    assert slots["t1"].problem == "assignee locum is not in the roster"
    assert slots["t2"].problem == "waits on t9, which is not a task given"


def test_a_prerequisite_cycle_leaves_its_tasks_unscheduled():
    tasks = [task("a", prerequisites=["b"]), task("b", prerequisites=["a"])]
    slots = schedule(tasks, roster(SPECIALIST), MONDAY)
    assert slots["a"].problem == "waits on b, which has no slot"
    assert slots["b"].problem == "waits on a, which has no slot"


def test_two_tasks_with_one_id_are_refused():
    with pytest.raises(ValueError, match="task t1 is given twice"):
        schedule([task("t1"), task("t1")], roster(SPECIALIST), MONDAY)


def test_a_completed_task_needs_the_day_it_was_done():
    with pytest.raises(ValueError, match="a completed task needs done_on"):
        task("t1", state=TaskState.COMPLETED)


def test_the_default_team_schedules_a_confirmed_neuropathic_plan_on_time():
    plan = [
        task("conference", Role.CARE_COORDINATOR, priority=Priority.URGENT, due_days=7),
        task("mood", Role.PAIN_PSYCHOLOGIST, due_days=14),
        task("intake", Role.PAIN_PSYCHOLOGIST, prerequisites=["conference"]),
        task("therapy", Role.PHYSICAL_THERAPIST, prerequisites=["conference"]),
        task("screening", Role.PAIN_PSYCHOLOGIST, prerequisites=["conference"]),
        task("trial", Role.INTERVENTIONALIST, due_days=56, prerequisites=["screening"]),
        task("implant", Role.INTERVENTIONALIST, due_days=84, prerequisites=["trial"]),
    ]
    slots = schedule(plan, load_roster(), MONDAY)
    assert all(slot.scheduled and not slot.late for slot in slots.values())
    assert slots["trial"].date > slots["screening"].date > slots["conference"].date


def test_the_same_inputs_give_the_same_schedule():
    team = load_roster()
    tasks = [task(f"t{n}", list(Role)[n % len(Role)], due_days=n) for n in range(30)]
    assert schedule(tasks, team, MONDAY) == schedule(list(tasks), team, MONDAY)


# --- Properties over generated plans --------------------------------------------------------

TEAM = roster(
    person("specialist-b", Role.PAIN_SPECIALIST, weekly_capacity=2),
    person("specialist-a", Role.PAIN_SPECIALIST, weekly_capacity=3, working_days=["mon", "wed"]),
    person(
        "interventionalist", Role.INTERVENTIONALIST, weekly_capacity=1, working_days=["tue", "thu"]
    ),
    person("pharmacist", Role.PHARMACIST, weekly_capacity=3),
)
ROLES = [Role.PAIN_SPECIALIST, Role.INTERVENTIONALIST, Role.PHARMACIST, Role.PHYSICAL_THERAPIST]
TODAY = date(2025, 3, 5)


@st.composite
def plans(draw: st.DrawFn) -> list[SchedulingTask]:
    count = draw(st.integers(min_value=1, max_value=14))
    tasks = []
    for index in range(count):
        state = draw(st.sampled_from(list(TaskState)))
        earlier = [f"t{n:02d}" for n in range(index)]
        tasks.append(
            SchedulingTask(
                task_id=f"t{index:02d}",
                role=draw(st.sampled_from(ROLES)),
                priority=draw(st.sampled_from(list(Priority))),
                created=TODAY - timedelta(days=draw(st.integers(0, 20))),
                due_days=draw(st.integers(0, 30)),
                prerequisites=tuple(
                    draw(st.lists(st.sampled_from(earlier), max_size=3, unique=True))
                    if earlier
                    else []
                ),
                state=state,
                assignee=draw(st.none() | st.sampled_from([p.id for p in TEAM.people])),
                done_on=(
                    TODAY + timedelta(days=draw(st.integers(-10, 3)))
                    if state is TaskState.COMPLETED
                    else None
                ),
            )
        )
    return tasks


bookings = st.dictionaries(
    st.tuples(
        st.sampled_from([p.id for p in TEAM.people]),
        st.sampled_from([iso_week(TODAY + timedelta(weeks=n)) for n in range(4)]),
    ),
    st.integers(0, 4),
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(plans(), bookings)
def test_every_schedule_keeps_capacity_working_days_prerequisites_and_today(tasks, booked):
    slots = schedule(tasks, TEAM, TODAY, booked)
    by_id = {t.task_id: t for t in tasks}
    assert slots.keys() == {
        t.task_id for t in tasks if t.state not in (TaskState.COMPLETED, TaskState.CANCELLED)
    }
    people = {p.id: p for p in TEAM.people}
    per_week = Counter((s.assignee, iso_week(s.date)) for s in slots.values() if s.scheduled)
    for (person_id, week), count in per_week.items():
        assert count <= people[person_id].weekly_capacity - booked.get((person_id, week), 0)
    for task_id, slot in slots.items():
        current = by_id[task_id]
        if not slot.scheduled:
            assert slot.problem and slot.assignee is None and not slot.late
            continue
        assert slot.date >= TODAY
        assert people[slot.assignee].works_on(slot.date)
        assert slot.late == (slot.date > current.due)
        if current.assignee is not None:
            assert slot.assignee == current.assignee
        else:
            assert people[slot.assignee].role is current.role
        for prerequisite in current.prerequisites:
            before = by_id[prerequisite]
            if before.state is TaskState.COMPLETED:
                assert slot.date >= before.done_on
            elif before.state is not TaskState.CANCELLED:
                assert slots[prerequisite].scheduled
                assert slot.date > slots[prerequisite].date


@settings(max_examples=200, deadline=None)
@given(plans(), bookings, st.randoms(use_true_random=False))
def test_shuffling_the_tasks_and_the_team_does_not_change_the_schedule(tasks, booked, random):
    shuffled_tasks = [
        replace(t, prerequisites=tuple(random.sample(t.prerequisites, len(t.prerequisites))))
        for t in tasks
    ]
    random.shuffle(shuffled_tasks)
    shuffled_people = list(TEAM.people)
    random.shuffle(shuffled_people)
    shuffled_team = Roster(id=TEAM.id, people=shuffled_people)
    assert schedule(shuffled_tasks, shuffled_team, TODAY, dict(reversed(booked.items()))) == (
        schedule(tasks, TEAM, TODAY, booked)
    )
