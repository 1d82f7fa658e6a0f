"""The care coordinator: its pure core turns a determination into a care plan from versioned
templates (`care_plan.plan_for`, `care_plan.reconcile`) and schedules the plan's tasks on the
team's calendar (`scheduling.schedule`)."""
