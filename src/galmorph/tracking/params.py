"""params.yaml sections as MLflow params: dotted keys, values spelled as in the YAML."""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from galmorph.config import Params


def _section_names() -> dict[type, str]:
    hints = typing.get_type_hints(Params)
    return {tp: name for name, tp in hints.items() if dataclasses.is_dataclass(tp)}


def _param_value(value: Any) -> str:
    # spelled as in params.yaml, so a value can be pasted back into it
    if value is None or isinstance(value, bool | list | tuple):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return str(value)


def flatten_params(params: Any, prefix: str = "") -> dict[str, str]:
    """Params as MLflow wants them: dotted keys (train.lr, tune.space.lr.low) to strings.

    Accepts the whole Params, one section (named after its field in Params: TrainConfig -> train.*),
    a sequence of sections, or a mapping of name -> section/value.
    """
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        if not prefix and not isinstance(params, Params):
            prefix = _section_names().get(type(params), "")
        params = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    elif isinstance(params, Sequence) and not isinstance(params, str | bytes):
        out: dict[str, str] = {}
        for section in params:
            out.update(flatten_params(section, prefix))
        return out
    if not isinstance(params, Mapping):
        raise TypeError(f"cannot flatten {type(params).__name__} into MLflow params")
    out = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if (dataclasses.is_dataclass(value) and not isinstance(value, type)) or isinstance(value, Mapping):
            out.update(flatten_params(value, name))
        else:
            out[name] = _param_value(value)
    return out
