"""The search space of params.yaml's tune.space: keys are the SECTION.KEY they set (`train.lr`,
`model.hidden`), each with a type and a range, validated against the config dataclasses before a trial
runs, so a typo fails before any training instead of in trial 7."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import optuna

from galmorph.config import Params, with_overrides
from galmorph.errors import UserError

TUNABLE_SECTIONS = ("model", "train", "augment", "preprocess")
NOT_HYPERPARAMETERS = {
    "train.epochs": "every trial trains tune.epochs epochs (train.epochs is the final model's)",
    "train.seed": "a seed is not a hyperparameter",
    "train.deterministic": "a reproducibility switch, not a hyperparameter",
    "train.device": "a device, not a hyperparameter",
    "train.precision": "a speed setting, not a hyperparameter",
    "train.channels_last": "a speed setting, not a hyperparameter",
    "train.keep_freed_memory": "a speed setting, not a hyperparameter",
    "train.num_workers": "a speed setting, not a hyperparameter",
    "train.checkpoint_dir": "a path",
    "train.out": "a path",
    "train.metrics": "a path",
    "train.curves": "a path",
}
FINETUNE_ONLY = ("augment.", "train.unfreeze_blocks", "train.layer_decay")
"""Keys with no effect in frozen mode (the head trains on cached embeddings, not on augmented images)."""
CACHE_KEYS = ("model.arch", "model.weights", "preprocess.")
"""Keys the embedding cache fixes in frozen mode (it was computed once with one value of each)."""

SPEC_KEYS = {"float": {"low", "high", "log", "step", "when"}, "int": {"low", "high", "log", "step", "when"}}
SPEC_KEYS["categorical"] = {"choices", "when"}


@dataclasses.dataclass(frozen=True)
class Condition:
    """One key of a `when`: the param's value must be one of `values`, or, `negated`, none of them."""

    key: str
    values: tuple[Any, ...]
    negated: bool = False

    def holds(self, value: Any) -> bool:
        return (value in self.values) != self.negated


@dataclasses.dataclass(frozen=True)
class SearchParam:
    """One entry of tune.space: the SECTION.KEY it sets, its distribution, and when it is active."""

    name: str
    type: Literal["float", "int", "categorical"]
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    when: tuple[Condition, ...] = ()

    def active(self, value_of: Callable[[str], Any]) -> bool:
        return all(c.holds(value_of(c.key)) for c in self.when)

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.name, list(self.choices))

    def values(self) -> tuple[Any, ...]:
        """The values this entry can take, as far as a `when` on it can tell."""
        if self.type == "categorical":
            return self.choices
        if self.type == "int" and not self.log and (self.high - self.low) // (self.step or 1) < 100:
            return tuple(range(self.low, self.high + 1, self.step or 1))
        return ()


def _current(params: Params, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(params, section), name)


def _check_target(name: str, params: Params, where: str) -> None:
    section, _, key = name.partition(".")
    if not key or "." in key:
        raise UserError(f"{where}: expected SECTION.KEY of params.yaml (e.g. train.lr, model.hidden), got {name!r}")
    if section not in TUNABLE_SECTIONS:
        raise UserError(f"{where}: section {section!r} cannot be tuned (expected one of {', '.join(TUNABLE_SECTIONS)})")
    fields = [f.name for f in dataclasses.fields(getattr(params, section))]
    if key not in fields:
        raise UserError(f"{where}: {section} has no key {key!r} (expected one of {', '.join(fields)})")
    if name in NOT_HYPERPARAMETERS:
        raise UserError(f"{where}: {name} cannot be tuned: {NOT_HYPERPARAMETERS[name]}")


def _number(spec: Mapping[str, Any], key: str, kind: str, where: str) -> float | int:
    if key not in spec:
        raise UserError(f"{where}: a {kind} needs {key}")
    value = spec[key]
    if isinstance(value, bool):
        raise UserError(f"{where}.{key}: expected a number, got {value!r}")
    if kind == "int":
        if not isinstance(value, int):
            raise UserError(f"{where}.{key}: expected an integer, got {value!r}")
        return value
    try:
        return float(value)  # YAML reads 1e-3 as a string
    except (TypeError, ValueError):
        raise UserError(f"{where}.{key}: expected a number, got {value!r}") from None


def _parse_one(name: str, spec: Any, params: Params, earlier: Mapping[str, SearchParam]) -> SearchParam:
    where = f"params: tune.space.{name}"
    _check_target(name, params, where)
    if not isinstance(spec, dict) or spec.get("type") not in SPEC_KEYS:
        raise UserError(f"{where}: expected {{type: float|int|categorical, ...}}, got {spec!r}")
    kind = spec["type"]
    unknown = sorted(set(spec) - SPEC_KEYS[kind] - {"type"})
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(unknown)} for a {kind} (expected {', '.join(sorted(SPEC_KEYS[kind]))})"
        )
    fields: dict[str, Any] = {}
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}.choices: expected a non-empty list, got {choices!r}")
        bad = [c for c in choices if not (c is None or isinstance(c, bool | int | float | str))]
        if bad:
            raise UserError(f"{where}.choices: Optuna takes numbers, strings, booleans or null, got {bad[0]!r}")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise UserError(f"{where}.choices: values repeat: {choices!r}")
        fields["choices"] = tuple(choices)
        probe = list(choices)
    else:
        low, high = _number(spec, "low", kind, where), _number(spec, "high", kind, where)
        if not low < high:
            raise UserError(f"{where}: expected low < high, got low={low} high={high}")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise UserError(f"{where}.log: expected true or false, got {log!r}")
        if log and low <= 0:
            raise UserError(f"{where}: a log scale needs low > 0, got {low}")
        step = _number(spec, "step", kind, where) if spec.get("step") is not None else None
        if step is not None and (step <= 0 or log):
            raise UserError(f"{where}.step: expected a positive step without log: true, got {step}")
        fields |= {"low": low, "high": high, "log": log, "step": step}
        probe = [low, high]
    for value in probe:  # every value must be one the param accepts (an int field gets no 0.5)
        with_overrides(params, {name: value}, where)
    fields["when"] = _parse_when(spec.get("when"), name, params, earlier, where)
    return SearchParam(name=name, type=kind, **fields)


def _parse_when(
    raw: Any, name: str, params: Params, earlier: Mapping[str, SearchParam], where: str
) -> tuple[Condition, ...]:
    """`when: {KEY: value | [values] | {not: value | [values]}}`; `not` is there for keys such as
    model.weights, whose meaningful side ("any pretrained file") cannot be listed."""
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{where}.when: expected a mapping such as {{train.mode: finetune}}, got {raw!r}")
    out = []
    for key, allowed in raw.items():
        key = str(key)
        section, _, field = key.partition(".")
        if not field or not hasattr(params, section) or not hasattr(getattr(params, section), field):
            raise UserError(f"{where}.when: {key!r} is not a SECTION.KEY of params.yaml")
        if key == name:
            raise UserError(f"{where}.when: an entry cannot depend on itself")
        negated = isinstance(allowed, dict)
        if negated:
            if set(allowed) != {"not"}:
                raise UserError(f"{where}.when.{key}: expected a value, a list or {{not: value}}, got {allowed!r}")
            allowed = allowed["not"]
        values = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        if not values:  # `[]` would switch the entry off for good, `{not: []}` would be no condition
            raise UserError(f"{where}.when.{key}: expected at least one value, got {allowed!r}")
        if key in earlier:
            possible = earlier[key].values()
            impossible = [v for v in values if possible and v not in possible]
            if impossible:
                raise UserError(f"{where}.when: {key} never takes {impossible[0]!r} (its choices: {list(possible)})")
        out.append(Condition(key, values, negated))
    return tuple(out)


def parse_space(params: Params) -> list[SearchParam]:
    """tune.space as SearchParams, in declaration order; a clear error for anything a trial could not use."""
    space: dict[str, SearchParam] = {}
    names = list(params.tune.space)
    for name, spec in params.tune.space.items():
        param = _parse_one(name, spec, params, space)
        for key in (c.key for c in param.when):
            if key in params.tune.space and key not in space:
                raise UserError(f"params: tune.space.{name}.when: {key} must come before {name} in tune.space")
        space[name] = param
    if not names:
        raise UserError("params: tune.space: nothing to tune (expected at least one SECTION.KEY entry)")
    out = list(space.values())
    for param in out:
        if param.name == "train.mode" or "frozen" not in _modes_when_active(param, space, params):
            continue
        if param.name.startswith(FINETUNE_ONLY):
            raise UserError(
                f"params: tune.space.{param.name}: has no effect in frozen mode (the head trains on cached "
                "embeddings); add `when: {train.mode: finetune}` or remove it"
            )
        if param.name.startswith(CACHE_KEYS):
            raise UserError(
                f"params: tune.space.{param.name}: fixed by the embedding cache in frozen mode (run `galmorph embed` "
                "with another value instead); add `when: {train.mode: finetune}` or remove it"
            )
    return out


def _modes_when_active(param: SearchParam, space: Mapping[str, SearchParam], params: Params) -> set[str]:
    mode = space.get("train.mode")
    modes = set(mode.choices) if mode is not None else {params.train.mode}
    return {m for m in modes if all(c.holds(m) for c in param.when if c.key == "train.mode")}


def inactive_params(space: Sequence[SearchParam], params: Params) -> list[str]:
    """Entries whose `when` can never hold with these params (e.g. finetune-only keys in a frozen study)."""
    names = {p.name for p in space}
    return [p.name for p in space if any(c.key not in names and not c.holds(_current(params, c.key)) for c in p.when)]


def suggest(trial: optuna.Trial, space: Sequence[SearchParam], params: Params) -> dict[str, Any]:
    """The trial's values of the active entries (define-by-run: a `when` sees the values drawn before it)."""
    values: dict[str, Any] = {}
    for param in space:
        if param.active(lambda key: values[key] if key in values else _current(params, key)):
            values[param.name] = param.suggest(trial)
    return values


def trial_params(params: Params, overrides: Mapping[str, Any]) -> Params:
    """The params one trial trains with: the suggested values, and tune.epochs epochs."""
    return with_overrides(params, {**overrides, "train.epochs": params.tune.epochs}, "tune")


def needs_features(params: Params) -> bool:
    """Whether some trial trains in frozen mode (and so reads the embedding cache)."""
    mode = params.tune.space.get("train.mode")
    modes = set(mode.get("choices", ())) if isinstance(mode, dict) else {params.train.mode}
    return "frozen" in modes
