"""The policy document at the trust boundary: strict pydantic models, nothing coerced.

Validators compile what they check (globs, RE2 programs, conditions), so an
error carries the location of the offending value and the loader turns that
location into a line number. Range limits live here as constants.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator

from supervisor.budget.amounts import MAX_LLM_PRICE_PER_MTOK, MAX_MICRO, MICRO_PER_USD, usd_to_micro
from supervisor.errors import StockadeError
from supervisor.policy import _regex
from supervisor.policy._glob import GlobProblem, resource_glob, tool_glob
from supervisor.policy.conditions import OPS
from supervisor.policy.model import Condition
from supervisor.stores.records import ROLES

__all__ = [
    "LIMIT_NAMES", "MAX_DELAY_S", "MAX_LIST", "MAX_RULES", "MAX_VELOCITY", "MAX_WINDOW_S",
    "MAX_APPROVERS", "ApprovalDoc", "BundlePolicyDoc", "PolicyDoc", "RuleDoc",
]

MAX_RULES = 1000
MAX_LIST = 256  # entries in any list (tool globs, role names, `in` operands, patterns ...)
MAX_DELAY_S = 60.0
MAX_VELOCITY = 1000  # the interceptor keeps this many timestamps per tool per run
MAX_WINDOW_S = 86_400.0
MAX_REASON = 500
MAX_OPERAND_DEPTH = 8
MAX_APPROVERS = 5  # distinct approver keys one request may need (four-eyes and a little more)
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")
_WHEN_PATH = re.compile(r"args(\.[A-Za-z0-9_-]{1,64}){1,16}")
_ARG_NAME = re.compile(r"args\.[A-Za-z_][A-Za-z0-9_]{0,63}")
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,127}")
# rate-limit overrides (names of supervisor.limits) -> must be a whole number
LIMIT_NAMES: dict[str, bool] = {
    "tenant_per_s": False, "tenant_burst": True, "user_per_s": False, "user_burst": True,
    "tool_per_s": False, "tool_burst": True, "tenant_per_hour": True, "llm_tokens_per_min": True,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, arbitrary_types_allowed=True)


def _str_list(v: Any) -> tuple[str, ...]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items or not all(isinstance(x, str) and x for x in items):
        raise ValueError("must be a non-empty string or a non-empty list of non-empty strings")
    if len(items) > MAX_LIST:
        raise ValueError(f"at most {MAX_LIST} entries")
    return tuple(items)


def _stored(info: ValidationInfo) -> bool:
    """A document an older version stored (``load_policy(stored=True)``): checks added since then do not refuse it,
    or an upgrade would refuse every call of its tenant (``policy.unavailable``) until an admin stored it again."""
    return bool(info.context and info.context.get("stored"))


def _roles(v: Any, info: ValidationInfo) -> frozenset[str]:
    names = _str_list(v)
    unknown = [n for n in names if n not in ROLES]
    if unknown and not _stored(info):  # `Admin` or `admn` validated, then never matched a key
        raise ValueError(f"unknown role {unknown[0]!r:.60}: a role is one of {', '.join(ROLES)}")
    return frozenset(names)


def _globs(make: Any) -> Any:
    def build(v: Any) -> tuple[Any, ...]:
        try:
            return tuple(make(p) for p in _str_list(v))
        except GlobProblem as exc:
            raise ValueError(str(exc)) from None
    return build


def _one_tool_glob(v: Any) -> Any:
    if not isinstance(v, str):
        raise ValueError("must be a tool name or glob")
    try:
        return tool_glob(v)
    except GlobProblem as exc:
        raise ValueError(str(exc)) from None


def _patterns(v: Any) -> Any:
    items = _str_list(v)
    try:
        for p in items:
            _regex.check_pattern(p)
        return _regex.compile_patterns(items)
    except _regex.RegexProblem as exc:
        raise ValueError(str(exc)) from None


def _json_value(v: Any, depth: int = 0) -> Any:
    """An operand or replacement: JSON types only, finite numbers, bounded depth and size."""
    if depth > MAX_OPERAND_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_OPERAND_DEPTH} levels")
    if v is None or isinstance(v, bool | str):
        return v
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("numbers must be finite (no .nan / .inf)")
        return v
    if isinstance(v, list):
        if len(v) > MAX_LIST:
            raise ValueError(f"at most {MAX_LIST} entries")
        return [_json_value(x, depth + 1) for x in v]
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        if len(v) > MAX_LIST:
            raise ValueError(f"at most {MAX_LIST} entries")
        return {k: _json_value(x, depth + 1) for k, x in v.items()}
    raise ValueError(f"unsupported value of type {type(v).__name__}")


def _scalar(v: Any) -> Any:
    v = _json_value(v)
    if isinstance(v, list | dict):
        raise ValueError("must be a string, number, boolean or null")
    return v


def _scalar_list(v: Any) -> tuple[Any, ...]:
    if not isinstance(v, list) or not v:
        raise ValueError("must be a non-empty list of strings, numbers, booleans or nulls")
    if len(v) > MAX_LIST:
        raise ValueError(f"at most {MAX_LIST} entries")
    return tuple(_scalar(x) for x in v)


def _number(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, int | float) or (isinstance(v, float) and not math.isfinite(v)):
        raise ValueError("must be a finite number (not a string, not a boolean)")
    return v


def _pattern(v: Any) -> Any:
    if not isinstance(v, str):
        raise ValueError("must be a regular expression string")
    return _patterns(v)


def _price_key(v: str) -> str:
    tool_glob(v)  # raises GlobProblem (a ValueError) for anything but a tool name or glob
    return v


def _regexp(pattern: str) -> str:
    def check(v: Any) -> Any:
        if not isinstance(v, str) or re.fullmatch(pattern, v) is None:
            raise ValueError(f"{v!r:.80} is not a valid name here")
        return v
    return check  # type: ignore[return-value]


ToolGlobs = Annotated[Any, BeforeValidator(_globs(tool_glob))]
ResourceGlobs = Annotated[Any, BeforeValidator(_globs(resource_glob))]
ToolGlob = Annotated[Any, BeforeValidator(_one_tool_glob)]
Names = Annotated[Any, BeforeValidator(lambda v: frozenset(_str_list(v)))]
Roles = Annotated[Any, BeforeValidator(_roles)]
Patterns = Annotated[Any, BeforeValidator(_patterns)]
WhenPath = Annotated[str, AfterValidator(_regexp(_WHEN_PATH.pattern))]
ArgName = Annotated[str, AfterValidator(_regexp(_ARG_NAME.pattern))]
ModelId = Annotated[str, AfterValidator(_regexp(_MODEL_ID.pattern))]
PriceKey = Annotated[str, AfterValidator(_price_key)]
MAX_CALL_PRICE_USD = MAX_MICRO // MICRO_PER_USD


def _call_price(v: float, info: ValidationInfo) -> float:
    """Checked as the budget step will convert it (``usd_to_micro``), so a written price is one a call can use."""
    if _stored(info):
        return v
    if v > MAX_CALL_PRICE_USD:  # 1e300 failed every call with a traceback, 1e12 with input.invalid
        raise ValueError(f"a price is at most {MAX_CALL_PRICE_USD} USD per call (got {v!r:.40})")
    try:
        micro = usd_to_micro(v)
    except StockadeError as exc:
        raise ValueError(exc.detail) from None
    if v > 0 and micro == 0:  # it would round to 0: a free tool
        raise ValueError("a positive price is at least 0.000001 USD (one micro-USD): this one would round to 0,"
                         " a free call")
    return v


def _llm_price(v: float, info: ValidationInfo) -> float:
    if v > MAX_LLM_PRICE_PER_MTOK and not _stored(info):  # else every llm.chat call was refused at call time
        raise ValueError(f"an LLM price is at most {MAX_LLM_PRICE_PER_MTOK} USD per million tokens (got {v!r:.40})")
    return v


CallPrice = Annotated[float, Field(ge=0, allow_inf_nan=False), AfterValidator(_call_price)]
LlmPrice = Annotated[float, Field(ge=0, allow_inf_nan=False), AfterValidator(_llm_price)]


class ConditionDoc(_Strict):
    eq: Annotated[Any, BeforeValidator(_json_value)] = None
    ne: Annotated[Any, BeforeValidator(_json_value)] = None
    in_: Annotated[Any, BeforeValidator(_scalar_list)] = Field(None, alias="in")
    not_in: Annotated[Any, BeforeValidator(_scalar_list)] = None
    gt: Annotated[Any, BeforeValidator(_number)] = None
    gte: Annotated[Any, BeforeValidator(_number)] = None
    lt: Annotated[Any, BeforeValidator(_number)] = None
    lte: Annotated[Any, BeforeValidator(_number)] = None
    contains: Annotated[Any, BeforeValidator(_scalar)] = None
    matches: Annotated[Any, BeforeValidator(_pattern)] = None

    @model_validator(mode="after")
    def _some_op(self) -> ConditionDoc:
        if not self.model_fields_set:
            raise ValueError(f"a condition needs at least one operator: {', '.join(OPS)}")
        return self

    def compile(self, path: tuple[str, ...]) -> list[Condition]:
        out = []
        for name in self.model_fields_set:
            op = "in" if name == "in_" else name
            value = getattr(self, name)
            if op == "matches":
                out.append(Condition(path, op, None, regex=value, regex_cost=max(1, int(value.programsize))))
            else:
                out.append(Condition(path, op, value))
        return sorted(out, key=lambda c: OPS.index(c.op))


class VelocityDoc(_Strict):
    max: int = Field(ge=1, le=MAX_VELOCITY)
    per_s: float = Field(gt=0, le=MAX_WINDOW_S, allow_inf_nan=False)
    scope: Literal["run", "user"] = "run"


class OrderDoc(_Strict):
    after: ToolGlob = None
    not_after: ToolGlob = None

    @model_validator(mode="after")
    def _exactly_one(self) -> OrderDoc:
        if len(self.model_fields_set) != 1:
            raise ValueError("order needs exactly one of: after, not_after")
        return self


def _whole(v: Any) -> Any:
    if type(v) is not int:  # strict mode already refuses "2"; this also names 2.0 and true plainly
        raise ValueError(f"must be a whole number from 1 to {MAX_APPROVERS} (got {v!r:.40})")
    return v


def _flag(v: Any) -> Any:
    if type(v) is not bool:
        raise ValueError(f"must be true or false (got {v!r:.40})")
    return v


class ApprovalDoc(_Strict):
    """How a ``require_approval`` rule is decided: by how many distinct approvers, and whether
    the run's own starter (its key, its user's keys) is barred from deciding (separation of duties)."""

    approvers: Annotated[int, BeforeValidator(_whole), Field(ge=1, le=MAX_APPROVERS)] = 1
    separate: Annotated[bool, BeforeValidator(_flag)] = False


class RuleDoc(_Strict):
    id: Annotated[str, AfterValidator(_regexp(_ID.pattern))]
    tool: ToolGlobs
    verdict: Literal["allow", "deny", "require_approval", "delay", "downgrade"]
    reason: str | None = Field(None, max_length=MAX_REASON)
    resource: ResourceGlobs = None
    when: dict[WhenPath, ConditionDoc] | None = Field(None, max_length=64)
    role: Roles = None
    user: Names = None
    project: Names = None
    content: Patterns = None
    velocity: VelocityDoc | None = None
    order: OrderDoc | None = None
    delay_s: float | None = Field(None, gt=0, le=MAX_DELAY_S, allow_inf_nan=False)
    downgrade: dict[ArgName, Annotated[Any, BeforeValidator(_json_value)]] | None = Field(
        None, min_length=1, max_length=16
    )
    approval: ApprovalDoc | None = None

    @model_validator(mode="after")
    def _verdict_fields(self) -> RuleDoc:
        if (self.verdict == "delay") != (self.delay_s is not None):
            raise ValueError("delay_s (seconds, at most 60) is required with verdict delay and only with it")
        if (self.verdict == "downgrade") != (self.downgrade is not None):
            raise ValueError("downgrade ({args.NAME: value, ...}) is required with verdict downgrade and only with it")
        if self.approval is not None and self.verdict != "require_approval":
            raise ValueError("approval ({approvers: N, separate: true|false}) is allowed only with verdict require_approval")
        return self


class LlmPriceDoc(_Strict):
    input_per_mtok: LlmPrice
    output_per_mtok: LlmPrice


class LimitsDoc(_Strict):
    tenant_per_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    tenant_burst: int | None = Field(None, ge=1)
    user_per_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    user_burst: int | None = Field(None, ge=1)
    tool_per_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    tool_burst: int | None = Field(None, ge=1)
    tenant_per_hour: int | None = Field(None, ge=1)
    llm_tokens_per_min: int | None = Field(None, ge=1)


class EgressDoc(_Strict):
    """Reserved for per-tenant egress settings; it has no keys yet."""


def _version(v: Any) -> Any:
    if type(v) is not int:  # Literal[1] alone took `true` and `1.0` (both equal 1)
        raise ValueError(f"Input should be 1 (got {v!r})")
    return v


class PolicyDoc(_Strict):
    version: Annotated[Literal[1], BeforeValidator(_version)]
    rules: list[RuleDoc] = Field(max_length=MAX_RULES)
    prices: dict[PriceKey, CallPrice] = Field(default_factory=dict, max_length=MAX_RULES)
    llm_prices: dict[ModelId, LlmPriceDoc] = Field(default_factory=dict, max_length=MAX_RULES)
    limits: LimitsDoc | None = None
    egress: EgressDoc | None = None


class BundlePolicyDoc(_Strict):
    """A bundle's narrowing layer (``policy:`` in bundle.yaml): rules only."""

    rules: list[RuleDoc] = Field(max_length=MAX_RULES)
