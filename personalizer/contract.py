"""The Personalizer wire contract: pydantic models, validation and the one error type.

The data contract is declared here once and serves validation, the server's
OpenAPI document and error messages alike. Models use Personalizer's camelCase
field names; requests are validated strictly enough that nothing malformed can
reach the learner or the log.

Every wire model is here, on purpose, though that makes the module long (~800 lines):
the engine, the server's typed routes (FastAPI builds ``/openapi.json`` from these
models), the evaluations manager and the simulator's scenario check all read one
set of rules and raise one error type, so a limit or a message changes in one file.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

#: Most candidate actions one rank request may carry (the retired service's limit); slots are
#: bounded by the number of actions.
MAX_ACTIONS = 50
#: Longest id (action, slot, event) a request may use.
MAX_ID_LENGTH = 256
#: Default ``explorationPercentage``: the share of ranks that explore (the policies' ``--epsilon``).
DEFAULT_EXPLORATION = 0.2
#: Floor for the probability logged with a chosen action: replay divides by it, so it may never be 0.
MIN_PROBABILITY = 1e-6
#: Deepest nesting of feature objects (``{"a": {"b": ...}}``) a request may use; deeper is a 400.
MAX_FEATURE_DEPTH = 32
#: Deepest nesting of any JSON request body (arrays and objects); deeper is a 400.
MAX_JSON_DEPTH = 64
#: Longest ISO-8601 duration any setting accepts (ten years); longer is a 400.
MAX_DURATION = timedelta(days=3650)
_FLOAT_MAX = sys.float_info.max
# A JSON escape of a UTF-16 surrogate (\uD800-\uDFFF): the only way a lone surrogate gets into a str.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


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


# ---------------------------------------------------------------- JSON bodies and text

def loads(body: bytes) -> Any:
    """Decode a JSON request body, refusing (400 BadRequest) what Python's json would let through
    only to fail later: lone UTF-16 surrogates (``"\\ud800"``: not encodable, so not loggable),
    integers beyond float range, and nesting deeper than ``MAX_JSON_DEPTH``.

    The full walk runs only when the cheap byte scans say it is needed, so a normal body costs
    one ``json.loads`` and two scans.
    """
    if not body.strip():
        raise PersonalizerError("BadRequest", "the request body is empty; send a JSON object", 400)
    try:
        value = json.loads(body, parse_int=_parse_int)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise PersonalizerError("BadRequest", f"the request body is not valid JSON: {_first_line(exc)}", 400) from None
    deep = body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH
    if deep or _SURROGATE_ESCAPE.search(body):
        _check_json(value, "body", 0)
    return value


def _parse_int(text: str) -> int:
    value = int(text)
    if abs(value) > _FLOAT_MAX:
        raise ValueError(f"the integer {text[:20]}... is beyond the range of a number")
    return value


def _check_json(value: Any, where: str, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise PersonalizerError("BadRequest", f"the request body nests deeper than {MAX_JSON_DEPTH} levels", 400)
    if isinstance(value, str):
        check_text(value, where, PersonalizerError)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, f"{where} key", PersonalizerError)
            _check_json(item, f"{where}.{_shown(key)}", depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]", depth + 1)


def check_text(value: str, what: str, error: type[Exception] = ValueError) -> str:
    """``value`` unless it holds a lone UTF-16 surrogate (it could never be encoded, logged or stored)."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        message = f"{what} holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not valid text"
        if error is PersonalizerError:
            raise PersonalizerError("BadRequest", message, 400) from None
        raise error(message) from None
    return value


def _shown(text: str) -> str:
    """``text`` safe to put in a message (surrogates replaced), shortened."""
    return text.encode("utf-8", "replace").decode("utf-8")[:64]


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _finite(value: int | float) -> bool:
    """True for a finite number within float range (a huge int would overflow ``math.isfinite``)."""
    if isinstance(value, int):
        return abs(value) <= _FLOAT_MAX
    return math.isfinite(value)


# ---------------------------------------------------------------- features

FeatureObject = dict[str, Any]


def check_features(value: Any, where: str) -> None:
    """Raise ValueError unless ``value`` is a list of feature objects Personalizer accepts.

    Values may be strings, finite numbers, booleans, null, nested objects
    (namespaces, at most ``MAX_FEATURE_DEPTH`` deep) or arrays of finite numbers;
    names may hold any character but a lone surrogate (they are escaped before
    they reach Vowpal Wabbit).
    """
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a list of feature objects")
    for i, obj in enumerate(value):
        if not isinstance(obj, dict):
            raise ValueError(f"{where}[{i}] must be an object, not {_json_type(obj)}")
        _check_feature_values(obj, f"{where}[{i}]", 1)


def _check_feature_values(obj: dict[str, Any], where: str, depth: int) -> None:
    if depth > MAX_FEATURE_DEPTH:
        raise ValueError(f"feature {where[:200]} nests deeper than {MAX_FEATURE_DEPTH} levels")
    for key, val in obj.items():
        # The hot path: ASCII names and strings cannot hold a surrogate; messages are built only on error.
        if not key.isascii():
            check_text(key, f"feature name {where}.{_shown(key)}")
        if key.startswith("_"):
            continue  # ignored entirely, as Personalizer did (metadata such as _label)
        if val is None or isinstance(val, bool):
            continue
        if isinstance(val, str):
            if not val.isascii():
                check_text(val, f"feature {where}.{_shown(key)}")
        elif isinstance(val, (int, float)):
            if not (math.isfinite(val) if type(val) is float else -_FLOAT_MAX <= val <= _FLOAT_MAX):
                raise ValueError(f"feature {where}.{_shown(key)} must be a finite number within float range")
        elif isinstance(val, dict):
            _check_feature_values(val, f"{where}.{_shown(key)}", depth + 1)
        elif isinstance(val, list):
            for j, item in enumerate(val):
                if isinstance(item, bool) or not isinstance(item, (int, float)):
                    raise ValueError(f"feature {where}.{_shown(key)}[{j}]: arrays may hold only numbers, "
                                     f"not {_json_type(item)}")
                if not _finite(item):
                    raise ValueError(f"feature {where}.{_shown(key)}[{j}] must be a finite number within float range")
        else:
            raise ValueError(f"feature {where}.{_shown(key)} has an unsupported type {_json_type(val)}")


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
        raise ValueError(f"{what} '{_shown(value)[:40]}...' is longer than {MAX_ID_LENGTH} characters")
    return check_text(value, what)


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


# ---------------------------------------------------------------- rank: cross-field rules

def rank_rule_violations(action_ids: Sequence[str],
                         slots: Iterable[tuple[str, Sequence[str], str]]) -> Iterator[str]:
    """Every broken cross-field rule of a catalog, first the one a rank request reports.

    ``slots``: (id, excludedActions, baselineAction) in order. The rank request's model
    validator raises the first message; the simulator's scenario check lists them all.
    """
    if not 1 <= len(action_ids) <= MAX_ACTIONS:
        yield f"actions: between 1 and {MAX_ACTIONS} actions are allowed, got {len(action_ids)}"
        return
    ids: set[str] = set()
    for a in action_ids:
        if a in ids:
            yield f"actions: action id '{a}' appears more than once"
        ids.add(a)
    slots = list(slots)
    if not 1 <= len(slots) <= len(action_ids):
        yield (f"slots: between 1 and {len(action_ids)} slots (the number of actions) are allowed, "
               f"got {len(slots)}")
        return
    slot_ids: set[str] = set()
    baselines: dict[str, str] = {}
    allowed_sets: list[set[str]] = []
    for slot_id, excluded, baseline in slots:
        if slot_id in slot_ids:
            yield f"slots: slot id '{slot_id}' appears more than once"
        slot_ids.add(slot_id)
        for x in excluded:
            if x not in ids:
                yield f"slot '{slot_id}': excluded action '{x}' is not one of the actions"
        if baseline not in ids:
            yield f"slot '{slot_id}': baselineAction '{baseline}' is not one of the actions"
        elif baseline in excluded:
            yield f"slot '{slot_id}': baselineAction '{baseline}' is in its own excludedActions"
        elif baseline in baselines:
            yield (f"slot '{slot_id}': baselineAction '{baseline}' is already the baseline of "
                   f"slot '{baselines[baseline]}'")
        else:
            baselines[baseline] = slot_id
        allowed = ids.difference(excluded)
        if not allowed:
            yield f"slot '{slot_id}': excludedActions leave no action to choose"
            continue
        # Slots are filled in order and each action fills one slot: every earlier slot that can
        # take one of this slot's actions may use one up, so this slot needs one more than those.
        competitors = sum(1 for earlier in allowed_sets if earlier & allowed)
        if len(allowed) <= competitors:
            yield (f"slot '{slot_id}': only {len(allowed)} allowed action(s), and {competitors} earlier "
                   f"slot(s) may take them; exclude fewer actions")
        allowed_sets.append(allowed)


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
    actions: list[RankableAction] = Field(description=f"1..{MAX_ACTIONS} candidate actions, ids unique.")
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

    @model_validator(mode="after")
    def _rank_rules(self) -> MultiSlotRankRequest:
        """The cross-field rules (unique ids, baselines, exclusions, fillable slots)."""
        broken = next(rank_rule_violations(
            [a.id for a in self.actions],
            ((s.id, s.excluded_actions, s.baseline_action) for s in self.slots)), None)
        if broken is not None:
            raise ValueError(broken)
        return self


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
    if not _finite(v) or not -1.0 <= v <= 1.0:
        raise ValueError(f"reward value {v} is outside [-1, 1]")
    return float(v)


# ---------------------------------------------------------------- configuration

#: ISO-8601 durations (``PT10M``, ``P1DT2H``; also ``00:01:00``) as pydantic reads them.
_DURATION = TypeAdapter(timedelta)


def parse_duration(text: str) -> timedelta:
    """A duration setting as a timedelta (pydantic's ISO-8601 reader), at most ``MAX_DURATION`` long
    and not negative (``P99999999999999999999D`` is a ValueError, not an overflow).

    Settings keep the text they were given (``"PT10M"``), so what a client sent is what it reads back.
    """
    shown = _shown(text) if isinstance(text, str) else repr(text)[:40]
    try:
        duration = _DURATION.validate_python(text, strict=False) if isinstance(text, str) else None
    except ValidationError:
        duration = None
    if duration is None or duration < timedelta(0):
        raise ValueError(f"'{shown}' is not an ISO-8601 duration such as PT10M")
    if duration > MAX_DURATION:
        raise ValueError(f"duration '{shown[:40]}' is longer than {MAX_DURATION.days} days")
    return duration


LearningMode = Literal["Online", "Apprentice", "LoggingOnly"]


class ServiceConfiguration(_Model):
    """Service settings with Personalizer's names and defaults."""

    reward_wait_time: str = Field(default="PT10M", alias="rewardWaitTime",
                                  description="Wait for rewards this long (5 s .. 2 days), then apply defaultReward.")
    default_reward: float = Field(default=0.0, alias="defaultReward", ge=-1, le=1)
    reward_aggregation: Literal["earliest", "sum"] = Field(default="earliest", alias="rewardAggregation")
    exploration_percentage: float = Field(default=DEFAULT_EXPLORATION, alias="explorationPercentage", ge=0, le=1)
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

    @field_validator("auto_optimization_frequency")
    @classmethod
    def _auto_frequency(cls, v: str | None) -> str | None:
        if v is not None and parse_duration(v) < timedelta(minutes=1):  # also refuses absurd durations
            raise ValueError(f"autoOptimizationFrequency {v} must be at least 1 minute")
        return v

    @field_validator("auto_optimization_start_date")
    @classmethod
    def _auto_start(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                datetime.fromisoformat(v.strip())
            except ValueError:
                raise ValueError(f"autoOptimizationStartDate '{v[:64]}' is not an ISO-8601 date-time") from None
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

    @field_validator("name", "arguments")
    @classmethod
    def _text(cls, v: str, info: Any) -> str:
        return check_text(v, f"policy {info.field_name}")


# ---------------------------------------------------------------- offline evaluations

#: Most learning settings one evaluation may compare beside Online, Baseline and Random.
MAX_CUSTOM_POLICIES = 10
# Epoch seconds a datetime can show (years 1..9999).
_MIN_EPOCH = datetime(1, 1, 2, tzinfo=UTC).timestamp()
_MAX_EPOCH = datetime(9999, 12, 30, tzinfo=UTC).timestamp()


def evaluation_time(value: Any, what: str) -> datetime:
    """An aware datetime from epoch seconds, a datetime or an ISO-8601 string (naive means UTC).

    ValueError (its message names ``what``) for anything else, or a time outside the years 1..9999.
    Python's ``fromisoformat`` reads the strings, as evaluations always have.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a date-time")
    if isinstance(value, (int, float)):
        # Epoch seconds a datetime can show; 1e308 or a huge int is a 400, not an overflow.
        if not _MIN_EPOCH <= value <= _MAX_EPOCH:
            raise ValueError(f"{what} is outside the years 1..9999")
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(check_text(value, what).strip())
        except ValueError:
            raise ValueError(f"{what} '{value[:64]!a}' is not an ISO-8601 date-time") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        try:
            value.timestamp()
        except (OverflowError, ValueError, OSError):
            raise ValueError(f"{what} is outside the years 1..9999") from None
        return value
    raise ValueError(f"{what} is required (an ISO-8601 date-time)")


class EvaluationContract(_Model):
    """An offline evaluation to run (the body of POST /evaluations and PUT /evaluations/{evaluationId}).

    The evaluations manager validates through it too (``Evaluations.create``), so the rules
    live here once. An error inside one of ``policies`` is an InvalidPolicyContract
    (``nested_error_codes``), any other an InvalidEvaluationContract; duplicate names and
    VW's own checks of the arguments are the manager's (they need the engine).
    """

    #: Error code of a problem inside an item of these list fields (the rest: the route's code).
    nested_error_codes: ClassVar[dict[str, str]] = {"policies": "InvalidPolicyContract"}

    name: str = Field(max_length=256, description="The evaluation's name.")
    start_time: datetime = Field(alias="startTime",
                                 description="Start of the logged events to evaluate (ISO-8601; naive means UTC).")
    end_time: datetime = Field(alias="endTime",
                               description="End (exclusive) of the logged events to evaluate; after startTime.")
    policies: list[PolicyContract] = Field(
        default_factory=list, max_length=MAX_CUSTOM_POLICIES,
        description=f"Up to {MAX_CUSTOM_POLICIES} learning settings to evaluate beside Online, Baseline and Random; "
                    "unique names.")
    enable_offline_experimentation: StrictBool | None = Field(
        default=None, alias="enableOfflineExperimentation",
        description="v1.x: also evaluate the preset learning settings (OfflineExperimentation).")
    enable_policy_optimization: StrictBool | None = Field(
        default=None, alias="enablePolicyOptimization",
        description="2022-09-01-preview name of enableOfflineExperimentation.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("name must be a non-empty string of <= 256 characters")
        return check_text(v, "name")  # a name that cannot be encoded could never be stored or listed

    @field_validator("start_time", "end_time", mode="before")
    @classmethod
    def _time(cls, v: Any, info: Any) -> datetime:
        return evaluation_time(v, "startTime" if info.field_name == "start_time" else "endTime")

    @field_validator("policies", mode="before")
    @classmethod
    def _policies(cls, v: Any) -> Any:
        if v is None:
            return []
        if not isinstance(v, (list, tuple)):
            raise ValueError("policies must be a list of {name, arguments}")
        return v

    @model_validator(mode="after")
    def _range(self) -> EvaluationContract:
        if self.end_time <= self.start_time:
            raise ValueError("endTime must be after startTime")
        return self

    def create_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``Evaluations.create`` (after the id) for this body."""
        explore = self.enable_offline_experimentation
        if explore is None:
            explore = self.enable_policy_optimization
        return {"name": self.name, "start": self.start_time, "end": self.end_time,
                "policies": [p.model_dump(by_alias=True) for p in self.policies],
                "enable_offline_experimentation": bool(explore)}


class PolicyReferenceContract(_Model):
    """A policy of a finished evaluation (the body of POST /configurations/applyFromEvaluation)."""

    evaluation_id: str = Field(alias="evaluationId", max_length=256)
    policy_name: str | None = Field(
        default=None, alias="policyName", max_length=256,
        description="Required by the contract; this server applies the evaluation's optimalPolicy when absent.")


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
        errors = exc.errors()
        raise PersonalizerError(error_code(model, errors, code), describe_errors(errors), 400) from None


def error_code(model: Any, errors: Sequence[Any], code: str) -> str:
    """``code``, or the ``nested_error_codes`` code of ``model`` when the first error lies inside a list item."""
    nested = getattr(model, "nested_error_codes", None) or {}
    for err in errors[:1]:
        loc = [part for part in err.get("loc", ()) if part not in _SOURCES]
        if len(loc) > 2 and loc[0] in nested and isinstance(loc[1], int):
            return str(nested[loc[0]])
    return code


def describe_validation_error(exc: ValidationError) -> str:
    """One readable line per problem: ``field.path: what is wrong``."""
    return describe_errors(exc.errors())


#: Where FastAPI says a request value came from (the first part of an error's location).
_SOURCES = ("body", "query", "path", "header", "cookie")
#: pydantic error types of a value that is not an object where a model was expected.
_NOT_AN_OBJECT = ("model_type", "model_attributes_type", "dict_type")


def describe_errors(errors: Sequence[Any], *, strip_source: bool = False) -> str:
    """``describe_validation_error`` for pydantic's error dicts; ``strip_source`` drops FastAPI's
    leading ``body``/``query``/``path`` so a typed route body reads as ``contract.parse`` reads it."""
    lines = []
    for err in errors[:5]:
        parts = tuple(err.get("loc", ()))
        if strip_source and parts and parts[0] in _SOURCES:
            if parts == ("body",) and err.get("type") in _NOT_AN_OBJECT:
                lines.append(f"request body must be a JSON object, not {_json_type(err.get('input'))}")
                continue
            parts = parts[1:] if parts[0] == "body" else parts[1:] or parts
        loc = ""
        for part in parts:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    more = len(errors) - 5
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
