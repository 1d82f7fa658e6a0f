"""The refractory-pain policy (POLICY.md) as a versioned, validated data file.

Every number the classifier uses is a setting of a policy file under `policies/`; the code holds
the rules, the file holds the numbers and the formulary. `load_policy()` returns `default-v1`.

Decisions taken here (POLICY.md leaves them open):
- Drug names are matched folded (`shared.contract.trials.fold_drug_name`, shared with the
  coordinator): trimmed of whitespace only (Python's `str.strip()`), lower-cased, then every run
  of whitespace, hyphens and underscores, mixed or not, becomes one `_`. Underscores or hyphens at
  either end are kept as a `_`: `-gabapentin` and `_gabapentin_` are `_gabapentin` and
  `_gabapentin_`, not formulary names (shown under that folded name, never counted).
- `rxnorm` is trimmed of whitespace before it is looked up. One the formulary lists wins over the
  name; any other (a product code, an ingredient this formulary does not list, a blank one)
  leaves the drug to its name, for every formulary drug alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PlainValidator,
    PositiveInt,
    PrivateAttr,
    StringConstraints,
    model_validator,
)

from shared.contract import AssessmentPart, Classification, DoseUnit
from shared.contract.trials import fold_drug_name
from shared.data_files import load_data_file

DEFAULT_POLICY_PATH = Path(__file__).parent / "policies" / "default-v1.toml"
DEFAULT_CRITERIA = "default"

DrugName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(_[a-z0-9]+)*$")]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]*$")]


def _minimum_dose(value: object) -> float | Literal["any"]:
    if value == "any":
        return "any"
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    raise ValueError('must be a number above 0 or "any"')


MinimumDose = Annotated[float | Literal["any"], PlainValidator(_minimum_dose)]


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FormularyDrug(_Settings):
    """One drug of known effectiveness and what an adequate trial of it takes."""

    drug: DrugName
    rxcui: Annotated[str, StringConstraints(pattern=r"^[0-9]+$")] | None = None
    drug_class: Name = Field(alias="class")
    line: PositiveInt
    minimum_dose: MinimumDose
    unit: DoseUnit
    minimum_days: PositiveInt
    dose_per: Literal["day", "application"] = "day"

    def is_adequate_dose(self, daily_dose: float, unit: DoseUnit) -> bool:
        """True when the dose is at or above the minimum, in the formulary's unit."""
        if unit is not self.unit:
            return False
        return daily_dose > 0 if self.minimum_dose == "any" else daily_dose >= self.minimum_dose

    def dose_text(self, daily_dose: float | Literal["any"], unit: DoseUnit | None = None) -> str:
        """A dose as a clinician reads it, e.g. `1200 mg/day`, `50 unit/application`."""
        amount = "any dose" if daily_dose == "any" else f"{daily_dose:g}"
        return f"{amount} {unit or self.unit}/{self.dose_per}"


class TreatmentCriteria(_Settings):
    """The treatment criteria for one classification (POLICY.md section 6)."""

    min_pain_days: NonNegativeInt
    min_failed_drugs: NonNegativeInt
    min_failed_classes: NonNegativeInt = 0
    min_failed_combinations: NonNegativeInt = 0
    min_current_pain: Annotated[float, Field(ge=0, le=10)]


class Policy(_Settings):
    """A complete, validated policy. Durations are in days of 24 hours of elapsed time."""

    id: Name
    chronic_days: PositiveInt
    current_pain_window_days: PositiveInt
    baseline_window_days: PositiveInt
    on_treatment_offset_days: NonNegativeInt
    response_threshold: Annotated[float, Field(gt=0, le=1)]
    combination_overlap_days: PositiveInt
    required_assessment: list[AssessmentPart]
    criteria: dict[str, TreatmentCriteria]
    formulary: list[FormularyDrug] = Field(min_length=1)

    _by_name: dict[str, FormularyDrug] = PrivateAttr(default_factory=dict)
    _by_rxcui: dict[str, FormularyDrug] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        if DEFAULT_CRITERIA not in self.criteria:
            raise ValueError(f"criteria.{DEFAULT_CRITERIA} is required")
        known = {c.value for c in Classification} | {DEFAULT_CRITERIA}
        for key in self.criteria:
            if key not in known:
                raise ValueError(f"criteria.{key}: not a classification nor `{DEFAULT_CRITERIA}`")
        if len(set(self.required_assessment)) != len(self.required_assessment):
            raise ValueError("required_assessment: a part is listed twice")
        for drug in self.formulary:
            if self._by_name.setdefault(drug.drug, drug) is not drug:
                raise ValueError(f"formulary: {drug.drug} is listed twice")
            if drug.rxcui and self._by_rxcui.setdefault(drug.rxcui, drug) is not drug:
                raise ValueError(f"formulary: RXCUI {drug.rxcui} is listed twice")
        return self

    def formulary_drug(self, name: str, rxnorm: str | None = None) -> FormularyDrug | None:
        """The formulary drug a trial is of, or None when the drug is not in the formulary.

        `rxnorm` (trimmed) wins when it is one of the formulary's RXCUIs; any other `rxnorm` (a
        product code, a drug with no RXCUI here) leaves the drug to its folded name.
        """
        if rxnorm is not None:
            by_rxcui = self._by_rxcui.get(rxnorm.strip())
            if by_rxcui is not None:
                return by_rxcui
        return self._by_name.get(fold_drug_name(name))

    def criteria_for(self, classification: Classification | None) -> tuple[str, TreatmentCriteria]:
        """The name and the treatment criteria that apply to a classification."""
        if classification is not None and classification.value in self.criteria:
            return classification.value, self.criteria[classification.value]
        return DEFAULT_CRITERIA, self.criteria[DEFAULT_CRITERIA]


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file, the field and why."""


def load_policy(path: Path | str | None = None) -> Policy:
    """Load and validate a policy file (TOML); without a path, the default policy `default-v1`.

    Raises PolicyError for a missing, unreadable or invalid file, naming each bad field.
    """
    path = Path(path) if path is not None else DEFAULT_POLICY_PATH
    return load_data_file(path, Policy, PolicyError, "policy")
