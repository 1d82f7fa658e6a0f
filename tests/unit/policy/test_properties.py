"""Properties: the determination depends on the set of events alone, not on how they arrive."""

from datetime import timedelta

from clinical_events import POLICY, History, day
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.classifier.rules import evaluate

# (drug, doses to pick from, unit): formulary drugs below and at their minimum, and one not in it.
DRUGS = [
    ("gabapentin", [300, 1200, 1800], "mg"),
    ("pregabalin", [150, 300], "mg"),
    ("duloxetine", [30, 60], "mg"),
    ("amitriptyline", [10, 25], "mg"),
    ("tramadol", [100, 200], "mg"),
    ("lidocaine", [1], "patch"),
    ("morphine", [5], "mg"),
    ("aspirin", [500], "mg"),
]
KINDS = ["medication_history", "physical_exam", "neurological_exam", "functional_assessment"]

# A coarse grid of instants, so that events often share one.
instants = st.integers(-40, 60).map(lambda n: day(3 * n))
painful = st.integers(0, 10)


def add_clinical_event(draw, history: History, trial_ids: list[str]) -> None:
    """One clinical event of any type other than a retraction, drawn onto `history`."""
    at = draw(instants)
    kind = draw(
        st.sampled_from(
            ["condition", "score", "vas", "start", "dose", "stop", "side_effect", "assess", "test"]
        )
    )
    if kind == "condition":
        history.condition(at, (at - timedelta(days=draw(st.integers(0, 500)))).date())
    elif kind == "score":
        history.score(at, draw(painful))
    elif kind == "vas":
        history.score(at, draw(st.integers(0, 100)), instrument="vas")
    elif kind == "start" or not trial_ids:
        drug, doses, unit = draw(st.sampled_from(DRUGS))
        trial_id = f"t-{len(trial_ids)}-{history.id_prefix}"
        trial_ids.append(trial_id)
        history.start(at, trial_id, drug, draw(st.sampled_from(doses)), unit)
    elif kind == "dose":
        unit = draw(st.sampled_from(["mg", "mg", "patch"]))
        history.dose(
            at, draw(st.sampled_from(trial_ids)), draw(st.sampled_from([1, 300, 1200])), unit
        )
    elif kind == "stop":
        reason = draw(st.sampled_from(["ineffective", "side_effects", "completed"]))
        history.stop(at, draw(st.sampled_from(trial_ids)), reason)
    elif kind == "side_effect":
        by_trial = draw(st.booleans())
        history.side_effect(
            at,
            trial_id=draw(st.sampled_from(trial_ids)) if by_trial else None,
            drug=None if by_trial else draw(st.sampled_from(DRUGS))[0],
            severity=draw(st.sampled_from(["mild", "moderate", "severe"])),
            intolerable=draw(st.booleans()),
        )
    elif kind == "assess":
        classification = draw(st.sampled_from([None, "neuropathic", "mixed"]))
        history.assess(at, draw(st.sampled_from(KINDS)), classification)
    else:
        history.diagnostic(at)


@st.composite
def patient_histories(draw) -> History:
    """A patient with a plausible history: pain, scores, trials, side effects, assessment."""
    history = History()
    trial_ids: list[str] = []
    if draw(st.booleans()):
        history.condition(draw(instants), day(-400 + draw(st.integers(0, 400))).date())
    for _ in range(draw(st.integers(1, 30))):
        history.score(draw(instants), draw(painful))
    for _ in range(draw(st.integers(0, 25))):
        add_clinical_event(draw, history, trial_ids)
    for event in draw(st.lists(st.sampled_from(history.events), max_size=2, unique=True)):
        history.retract(draw(instants), event)
    return history


as_of_instants = st.integers(0, 200).map(lambda n: day(n, hours=6))
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def published(events, as_of) -> dict:
    return evaluate(events, POLICY, as_of).model_dump(mode="json")


@PROPERTY_SETTINGS
@given(history=patient_histories(), as_of=as_of_instants, data=st.data())
def test_arrival_order_never_changes_the_determination(history, as_of, data):
    shuffled = data.draw(st.permutations(history.events))
    assert published(shuffled, as_of) == published(history.events, as_of)


@PROPERTY_SETTINGS
@given(history=patient_histories(), as_of=as_of_instants, data=st.data())
def test_duplicated_events_never_change_the_determination(history, as_of, data):
    again = data.draw(st.lists(st.sampled_from(history.events), max_size=20))
    delivered = data.draw(st.permutations(history.events + again))
    assert published(delivered, as_of) == published(history.events, as_of)


@PROPERTY_SETTINGS
@given(history=patient_histories(), as_of=as_of_instants, data=st.data())
def test_an_event_and_its_retraction_in_either_order_never_change_the_determination(
    history, as_of, data
):
    injected = History(id_prefix="injected")
    delivered = list(history.events)
    for _ in range(data.draw(st.integers(1, 4))):
        trial_ids = list(data.draw(st.sampled_from([(), ("t-0-p-1",)])))
        add_clinical_event(data.draw, injected, trial_ids)
        event = injected.events[-1]
        retraction = injected.retract(data.draw(instants), event)
        pair = [event, retraction] if data.draw(st.booleans()) else [retraction, event]
        for item in pair:
            delivered.insert(data.draw(st.integers(0, len(delivered))), item)
    assert published(delivered, as_of) == published(history.events, as_of)
