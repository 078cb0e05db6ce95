"""Per-token LLM prices: the shipped table, an operator's file on top, per-tenant overrides on top of that.

Prices are USD per million tokens, so ``tokens x price`` is already micro-USD:
cost_micro = ceil(input_tokens * input_price + output_tokens * output_price).
Decimal arithmetic keeps 0.4 x 12 at 4.8 (and the ceiling at 5), not 4.800000000000001.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from supervisor import yaml12
from supervisor.budget.amounts import MAX_LLM_PRICE_PER_MTOK
from supervisor.settings import SettingsError

__all__ = ["LlmPricing", "Price", "PriceOverrides"]

PriceOverrides = Mapping[str, Mapping[str, float]]  # "provider/name" (or glob, or "default") -> {"input", "output"}

SHIPPED = Path(__file__).with_name("prices.yaml")
_SNAPSHOT = re.compile(r"-(?:\d{8}|\d{4}-\d{2}-\d{2}|latest)$")
_MAX_PRICE = Decimal(MAX_LLM_PRICE_PER_MTOK)  # USD per million tokens; anything above is a typo


@dataclass(frozen=True)
class Price:
    input: Decimal  # USD per million input tokens
    output: Decimal  # USD per million output tokens

    def cost_micro(self, input_tokens: int, output_tokens: int) -> int:
        return math.ceil(Decimal(max(0, input_tokens)) * self.input + Decimal(max(0, output_tokens)) * self.output)


class LlmPricing:
    def __init__(self, models: Mapping[str, Price], default: Price) -> None:
        self._exact = {k: v for k, v in models.items() if not _is_glob(k)}
        self._globs = [(k, v) for k, v in models.items() if _is_glob(k)]
        self.default = default

    @classmethod
    def load(cls, path: Path | None = None) -> LlmPricing:
        """The shipped table, with ``path`` (``settings.llm_pricing_file``) merged over it."""
        default, models = _parse(_read(SHIPPED), str(SHIPPED))
        if default is None:
            raise SettingsError(f"{SHIPPED} has no default price")
        if path is not None:
            file_default, file_models = _parse(_read(path), "STOCKADE_LLM_PRICING_FILE")
            default = file_default or default
            models = {**models, **file_models}
        return cls(models, default)

    def price_for(self, model: str, overrides: PriceOverrides | None = None) -> Price:
        layers: list[tuple[dict[str, Price], list[tuple[str, Price]], Price | None]] = []
        if overrides:
            o_default, o_models = _parse(overrides, "llm price overrides")
            layers.append(
                (
                    {k: v for k, v in o_models.items() if not _is_glob(k)},
                    [(k, v) for k, v in o_models.items() if _is_glob(k)],
                    o_default,
                )
            )
        layers.append((self._exact, self._globs, self.default))
        base = _SNAPSHOT.sub("", model)
        for exact, _, _ in layers:
            for name in (model, base):
                if name in exact:
                    return exact[name]
        for _, globs, _ in layers:
            for pattern, price in globs:
                if fnmatch.fnmatchcase(model, pattern):
                    return price
        for _, _, default in layers:
            if default is not None:
                return default
        return self.default

    def cost_micro(
        self, model: str, input_tokens: int, output_tokens: int, overrides: PriceOverrides | None = None
    ) -> int:
        return self.price_for(model, overrides).cost_micro(input_tokens, output_tokens)


def _is_glob(key: str) -> bool:
    return any(c in key for c in "*?[")


def _read(path: Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"invalid setting STOCKADE_LLM_PRICING_FILE: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:  # was "internal: UnicodeDecodeError" for every command
        raise SettingsError(f"invalid setting STOCKADE_LLM_PRICING_FILE: {path} is not UTF-8 text (byte "
                            f"{exc.start})") from None
    try:
        return json.loads(text) if str(path).endswith(".json") else yaml12.safe_load(text)
    except RecursionError:
        raise SettingsError(f"invalid setting STOCKADE_LLM_PRICING_FILE: {path} is nested too deeply") from None
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else "parse error"
        mark = getattr(exc, "problem_mark", None)
        if isinstance(exc, yaml.MarkedYAMLError) and mark is not None and exc.problem:
            first = f"line {mark.line + 1}: {exc.problem.splitlines()[0]}"
        raise SettingsError(
            f"invalid setting STOCKADE_LLM_PRICING_FILE: {path} is not valid JSON/YAML: {first}"
        ) from None


def _parse(data: Any, where: str) -> tuple[Price | None, dict[str, Price]]:
    """Accepts ``{default: {...}, models: {...}}`` or a flat ``{model: {input, output}}`` mapping."""
    if not isinstance(data, Mapping):
        raise SettingsError(f"invalid {where}: expected a mapping of model -> {{input, output}}")
    default_raw = data.get("default")
    if "models" in data:
        models_raw = data["models"]
        if not isinstance(models_raw, Mapping):
            raise SettingsError(f"invalid {where}: models must be a mapping of model -> {{input, output}}")
    else:
        models_raw = {k: v for k, v in data.items() if k != "default"}
    default = _price(default_raw, f"{where}: default") if default_raw is not None else None
    return default, {str(k): _price(v, f"{where}: {k}") for k, v in models_raw.items()}


# The policy document and the shipped table spell these ``input_per_mtok`` / ``output_per_mtok``;
# the short forms are accepted too. Both mean USD per million tokens.
_ALIASES = {"input_per_mtok": "input", "output_per_mtok": "output"}


def _price(raw: Any, where: str) -> Price:
    if isinstance(raw, Mapping):
        raw = {_ALIASES.get(k, k): v for k, v in raw.items()}
    if not isinstance(raw, Mapping) or set(raw) - {"input", "output"} or not {"input", "output"} <= set(raw):
        raise SettingsError(f"invalid {where}: expected {{input: USD per 1M tokens, output: USD per 1M tokens}}")
    try:
        vals = [Decimal(str(raw["input"])), Decimal(str(raw["output"]))]
    except InvalidOperation:
        raise SettingsError(f"invalid {where}: prices must be numbers") from None
    if (
        isinstance(raw["input"], bool)
        or isinstance(raw["output"], bool)
        or any(not v.is_finite() or v < 0 or v > _MAX_PRICE for v in vals)
    ):
        raise SettingsError(f"invalid {where}: prices must be numbers between 0 and {_MAX_PRICE}")
    return Price(vals[0], vals[1])
