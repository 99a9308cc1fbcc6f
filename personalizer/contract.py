"""The Personalizer wire contract: pydantic models, validation and the one error type.

The data contract is declared here once and serves validation, the server's
OpenAPI document and error messages alike. Models use Personalizer's camelCase
field names; requests are validated strictly enough that nothing malformed can
reach the learner or the log.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_ACTIONS = 50
MAX_ID_LENGTH = 256


class PersonalizerError(Exception):
    """The one error every backend raises: a Personalizer error code, message and HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def to_body(self) -> dict[str, Any]:
        """The Personalizer error body: ``{"error": {"code", "message"}}``."""
        return {"error": {"code": self.code, "message": self.message}}

    def __repr__(self) -> str:
        return f"PersonalizerError({self.code!r}, {self.message!r}, status={self.status})"

    def __str__(self) -> str:
        return f"{self.code} ({self.status}): {self.message}"


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


# ---------------------------------------------------------------- features

FeatureObject = dict[str, Any]


def check_features(value: Any, where: str) -> None:
    """Raise ValueError unless ``value`` is a list of feature objects Personalizer accepts.

    Values may be strings, finite numbers, booleans, null, nested objects
    (namespaces) or arrays of finite numbers; names may hold any character
    (they are escaped before they reach Vowpal Wabbit).
    """
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a list of feature objects")
    for i, obj in enumerate(value):
        if not isinstance(obj, dict):
            raise ValueError(f"{where}[{i}] must be an object, not {_json_type(obj)}")
        _check_feature_values(obj, f"{where}[{i}]")


def _check_feature_values(obj: dict[str, Any], where: str) -> None:
    for key, val in obj.items():
        path = f"{where}.{key}"
        if key.startswith("_"):
            continue  # ignored entirely, as Personalizer did (metadata such as _label)
        if val is None or isinstance(val, (str, bool)):
            continue
        if isinstance(val, (int, float)):
            if not math.isfinite(val):
                raise ValueError(f"feature {path} must be a finite number, not {val}")
        elif isinstance(val, dict):
            _check_feature_values(val, path)
        elif isinstance(val, list):
            for j, item in enumerate(val):
                if isinstance(item, bool) or not isinstance(item, (int, float)):
                    raise ValueError(f"feature {path}[{j}]: arrays may hold only numbers, not {_json_type(item)}")
                if not math.isfinite(item):
                    raise ValueError(f"feature {path}[{j}] must be a finite number, not {item}")
        else:
            raise ValueError(f"feature {path} has an unsupported type {_json_type(val)}")


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    for t, name in names.items():
        if isinstance(value, t):
            return name
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def _check_id(value: str, what: str) -> str:
    if not value or not value.strip():
        raise ValueError(f"{what} must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{what} '{value[:40]}...' is longer than {MAX_ID_LENGTH} characters")
    return value


def _feature_list(v: Any, where: str) -> Any:
    """A feature list that may be null (treated as empty)."""
    if v is None:
        return []
    check_features(v, where)
    return v


def _null_default(v: Any, field: str) -> Any:
    """JSON null for an optional list or flag means its default."""
    if v is None:
        return False if field == "defer_activation" else []
    return v


# ---------------------------------------------------------------- rank

class RankableAction(_Model):
    """An action (a content item) with its features."""

    id: str = Field(description="Action id, unique in the request.")
    features: list[FeatureObject] = Field(description="Feature objects describing the action.")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _check_id(v, "action id")

    @field_validator("features", mode="before")
    @classmethod
    def _features(cls, v: Any) -> Any:
        check_features(v, "action features")
        if not v:
            raise ValueError("an action needs at least one feature object")
        return v


class SlotRequest(_Model):
    """A slot of the page to fill, with its features, exclusions and baseline action."""

    id: str = Field(description="Slot id, unique in the request.")
    features: list[FeatureObject] = Field(default_factory=list, description="Feature objects describing the slot.")
    excluded_actions: list[str] = Field(default_factory=list, alias="excludedActions",
                                        description="Action ids this slot must never show.")
    baseline_action: str = Field(alias="baselineAction",
                                 description="The action the application would show without personalization.")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _check_id(v, "slot id")

    @field_validator("features", mode="before")
    @classmethod
    def _features(cls, v: Any) -> Any:
        return _feature_list(v, "slot features")

    @field_validator("excluded_actions", mode="before")
    @classmethod
    def _excluded(cls, v: Any) -> Any:
        return _null_default(v, "excluded_actions")


class MultiSlotRankRequest(_Model):
    """Multi-slot rank request: which action should fill each slot for this context?"""

    context_features: list[FeatureObject] = Field(default_factory=list, alias="contextFeatures",
                                                  description="Feature objects describing the context.")
    actions: list[RankableAction] = Field(description="1..50 candidate actions.")
    slots: list[SlotRequest] = Field(description="Slots to fill, in order.")
    event_id: str | None = Field(default=None, alias="eventId",
                                 description="Optional event id (<=256 chars); generated when absent.")
    defer_activation: bool = Field(default=False, alias="deferActivation",
                                   description="Learn from this event only once it is activated.")

    @field_validator("context_features", mode="before")
    @classmethod
    def _context(cls, v: Any) -> Any:
        return _feature_list(v, "contextFeatures")

    @field_validator("event_id")
    @classmethod
    def _event_id(cls, v: str | None) -> str | None:
        return None if v is None else _check_id(v, "eventId")

    @field_validator("defer_activation", mode="before")
    @classmethod
    def _defer(cls, v: Any) -> Any:
        return _null_default(v, "defer_activation")


class SlotResponse(_Model):
    """The chosen action of one slot; ``probability`` is this project's documented extension."""

    id: str
    reward_action_id: str | None = Field(default=None, alias="rewardActionId")
    probability: float | None = Field(default=None, description="Probability with which the action was chosen.")


class MultiSlotRankResponse(_Model):
    """Multi-slot rank response: the event id and each slot's chosen action."""

    event_id: str = Field(alias="eventId")
    slots: list[SlotResponse]


class RankRequest(_Model):
    """Single-slot rank request (v1.0 contract)."""

    context_features: list[FeatureObject] = Field(default_factory=list, alias="contextFeatures")
    actions: list[RankableAction]
    excluded_actions: list[str] = Field(default_factory=list, alias="excludedActions")
    event_id: str | None = Field(default=None, alias="eventId")
    defer_activation: bool = Field(default=False, alias="deferActivation")

    @field_validator("context_features", mode="before")
    @classmethod
    def _context(cls, v: Any) -> Any:
        return _feature_list(v, "contextFeatures")

    @field_validator("event_id")
    @classmethod
    def _event_id(cls, v: str | None) -> str | None:
        return None if v is None else _check_id(v, "eventId")

    @field_validator("defer_activation", "excluded_actions", mode="before")
    @classmethod
    def _null_is_default(cls, v: Any, info: Any) -> Any:
        return _null_default(v, info.field_name)


class RankedAction(_Model):
    """One action of a single-slot ranking with its probability."""

    id: str
    probability: float


class RankResponse(_Model):
    """Single-slot rank response: every action with its probability, and the chosen one."""

    ranking: list[RankedAction]
    event_id: str = Field(alias="eventId")
    reward_action_id: str | None = Field(default=None, alias="rewardActionId")


# ---------------------------------------------------------------- reward

class SlotReward(_Model):
    """A reward for one slot of an event."""

    slot_id: str = Field(alias="slotId")
    value: float = Field(description="Reward in [-1, 1].")

    @field_validator("slot_id")
    @classmethod
    def _slot(cls, v: str) -> str:
        return _check_id(v, "slotId")

    @field_validator("value", mode="before")
    @classmethod
    def _value(cls, v: Any) -> Any:
        return _check_reward_value(v)


class MultiSlotRewardRequest(_Model):
    """Rewards for some slots of one event; more may follow in later calls."""

    reward: list[SlotReward]

    @field_validator("reward")
    @classmethod
    def _non_empty(cls, v: list[SlotReward]) -> list[SlotReward]:
        if not v:
            raise ValueError("reward must list at least one slot")
        return v


class RewardRequest(_Model):
    """Single-slot reward."""

    value: float

    @field_validator("value", mode="before")
    @classmethod
    def _value(cls, v: Any) -> Any:
        return _check_reward_value(v)


def _check_reward_value(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"reward value must be a number, not {_json_type(v)}")
    if not math.isfinite(v) or not -1.0 <= v <= 1.0:
        raise ValueError(f"reward value {v} is outside [-1, 1]")
    return float(v)


# ---------------------------------------------------------------- configuration

_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> timedelta:
    """Parse an ISO-8601 duration of days, hours, minutes and seconds (``PT10M``, ``P1DT2H``)."""
    m = _DURATION.match(text or "")
    if not m or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"'{text}' is not an ISO-8601 duration such as PT10M")
    parts = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
    return timedelta(days=parts["d"], hours=parts["h"], minutes=parts["m"], seconds=parts["s"])


LearningMode = Literal["Online", "Apprentice", "LoggingOnly"]


class ServiceConfiguration(_Model):
    """Service settings with Personalizer's names and defaults."""

    reward_wait_time: str = Field(default="PT10M", alias="rewardWaitTime",
                                  description="Wait for rewards this long (5 s .. 2 days), then apply defaultReward.")
    default_reward: float = Field(default=0.0, alias="defaultReward", ge=-1, le=1)
    reward_aggregation: Literal["earliest", "sum"] = Field(default="earliest", alias="rewardAggregation")
    exploration_percentage: float = Field(default=0.2, alias="explorationPercentage", ge=0, le=1)
    model_export_frequency: str = Field(default="PT1M", alias="modelExportFrequency")
    log_mirror_enabled: bool = Field(default=False, alias="logMirrorEnabled")
    log_mirror_sas_uri: str | None = Field(default=None, alias="logMirrorSasUri")
    log_retention_days: int = Field(default=90, alias="logRetentionDays", ge=-1)
    last_configuration_edit_date: str | None = Field(default=None, alias="lastConfigurationEditDate")
    learning_mode: LearningMode = Field(default="Online", alias="learningMode")
    is_auto_optimization_enabled: bool = Field(default=False, alias="isAutoOptimizationEnabled")
    auto_optimization_frequency: str | None = Field(default=None, alias="autoOptimizationFrequency")
    auto_optimization_start_date: str | None = Field(default=None, alias="autoOptimizationStartDate")
    model_retrain_days: int = Field(default=0, alias="modelRetrainDays", ge=0)

    @field_validator("reward_wait_time")
    @classmethod
    def _wait(cls, v: str) -> str:
        d = parse_duration(v)
        if not timedelta(seconds=5) <= d <= timedelta(days=2):
            raise ValueError(f"rewardWaitTime {v} must be between 5 seconds and 2 days")
        return v

    @field_validator("model_export_frequency")
    @classmethod
    def _export(cls, v: str) -> str:
        parse_duration(v)
        return v

    @field_validator("reward_aggregation", mode="before")
    @classmethod
    def _aggregation(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @property
    def reward_wait_seconds(self) -> float:
        """rewardWaitTime in seconds."""
        return parse_duration(self.reward_wait_time).total_seconds()


class PolicyContract(_Model):
    """Learning settings: a name and Vowpal Wabbit arguments."""

    name: str = Field(max_length=256)
    arguments: str = Field(max_length=1024)


class ModelProperties(_Model):
    """When the current model was created (reset or imported) and last changed."""

    creation_time: str | None = Field(default=None, alias="creationTime")
    last_modified_time: str | None = Field(default=None, alias="lastModifiedTime")


class DateRange(_Model):
    """A time range of the event log."""

    from_: str | None = Field(default=None, alias="from")
    to: str | None = None


class LogsProperties(_Model):
    """What the event log holds."""

    date_range: DateRange | None = Field(default=None, alias="dateRange")


class ErrorDetail(_Model):
    """The error object of a Personalizer error body."""

    code: str
    message: str


class ErrorResponse(_Model):
    """Personalizer's error body."""

    error: ErrorDetail


# ---------------------------------------------------------------- parsing helpers

def parse(model: type[_Model], body: Any, code: str = "BadRequest") -> Any:
    """Validate a JSON body against ``model``; any problem becomes a 400 PersonalizerError.

    The message names the offending field (``actions[2].id``) so the caller can fix it.
    """
    if not isinstance(body, dict):
        raise PersonalizerError(code, f"request body must be a JSON object, not {_json_type(body)}", 400)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise PersonalizerError(code, describe_validation_error(exc), 400) from None


def describe_validation_error(exc: ValidationError) -> str:
    """One readable line per problem: ``field.path: what is wrong``."""
    lines = []
    for err in exc.errors()[:5]:
        loc = ""
        for part in err["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    more = len(exc.errors()) - 5
    if more > 0:
        lines.append(f"... and {more} more problem(s)")
    return "; ".join(lines)


# ---------------------------------------------------------------- feature importances (2022-09-01-preview)

class FeatureImportanceContract(_Model):
    """A feature-importance job to run (the body of PUT /featureImportances/{featureImportanceId})."""

    name: str = Field(min_length=1, max_length=256, description="The feature importance's name.")
    start_time: datetime = Field(alias="startTime", description="Start of the logged events (ISO-8601; naive: UTC).")
    end_time: datetime = Field(alias="endTime", description="End (exclusive) of the logged events; after startTime.")


class FeatureScore(_Model):
    """One feature's normalized importance; the drop in reward without it rides along (extensions)."""

    namespace: str = Field(description="context, action or slot.")
    feature_name: str = Field(alias="featureName", description="The feature's key path; _id: the ids of actions/slots.")
    score: float = Field(description="Share of the estimated reward lost without the feature (0..1, sums to 1).")
    reward_drop: float | None = Field(default=None, alias="rewardDrop",
                                      description="Extension: estimated reward per event lost without the feature.")
    reward_drop_interval: list[float] | None = Field(default=None, alias="rewardDropInterval",
                                                     description="Extension: confidence interval of rewardDrop.")


class FeatureImportanceDetails(_Model):
    """A feature-importance job without its scores (the items of the list)."""

    id: str = Field(max_length=256)
    name: str = Field(max_length=256)
    start_time: str = Field(alias="startTime")
    end_time: str = Field(alias="endTime")
    creation_time: str = Field(alias="creationTime")
    status: Literal["Succeeded", "Running", "Failed", "NotSubmitted", "Timeout", "Canceled"]
    progress: float | None = Field(default=None, description="Extension: share of the work done (0..1).")


class FeatureImportance(FeatureImportanceDetails):
    """A feature-importance job with its scores, sorted in descending order once it succeeded."""

    feature_scores: list[FeatureScore] = Field(default_factory=list, alias="featureScores")
    description: str = ""


class FeatureImportances(_Model):
    """A page of feature-importance jobs."""

    value: list[FeatureImportanceDetails]
    next_link: str | None = Field(default=None, alias="nextLink")
