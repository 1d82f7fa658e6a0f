"""`painpath classifier` with a rule that raises for some patients: the quarantine's test double.

    python -m tests.integration.poisoned_classifier classifier --port N

is the real worker, except that deciding a patient whose id starts with `pt-poison-` raises
OverflowError, as a rule with a bug would (say, date arithmetic leaving the calendar).
"""

from __future__ import annotations

POISON_PREFIX = "pt-poison-"


def _poison() -> None:
    import services.classifier.decisions as decisions

    real = decisions.evaluate

    def evaluate(events, policy, as_of):
        events = list(events)
        if events and events[0].data.patient_id.startswith(POISON_PREFIX):
            raise OverflowError("date value out of range")
        return real(events, policy, as_of)

    decisions.evaluate = evaluate


if __name__ == "__main__":
    from painpath.cli import main

    _poison()
    main()
