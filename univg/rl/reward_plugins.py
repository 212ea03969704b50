"""Rewards defined outside univg, named in YAML beside the built-in ones.

``model.init_args.rewards`` maps a name to a weight (a registered reward, :mod:`univg.rl.rewards`) or to
a plug-in: a callable with the rewards' calling convention, ``fn(completions, **kwargs) ->
list[float]`` (``boxes``, ``frame``, ``sizes``, ``answer_formats``, ``strict`` arrive as keyword
arguments), given by ``class_path`` and built with ``init_args``::

    rewards:
      accuracy: 1.0
      format: 1.0
      brevity:
        class_path: my_rewards.py:Brevity     # a file (relative to the working directory) or a module
        init_args: {max_chars: 400}
        weight: 0.5

A ``class_path`` names a class (instantiated with ``init_args``; the instance is called) or a
function (``init_args`` become keyword arguments of every call). ``module.path.Name`` imports an
installed or importable module; ``some/file.py:Name`` loads the file.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from univg.rl.rewards import RewardFn, get_reward


@dataclass
class RewardPlugin:
    """A reward from outside the package: ``class_path``, its ``init_args`` and its ``weight``."""

    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0


#: What ``rewards:`` maps a name to in a config: a registered reward's weight, or a plug-in's
#: fields (a plain mapping: jsonargparse would read a ``class_path`` key as its own subclass syntax).
RewardEntry = float | dict[str, Any]

_PLUGIN_KEYS = ("class_path", "init_args", "weight")


def _import_object(class_path: str) -> Any:
    """``pkg.module.Name`` or ``path/to/file.py:Name``."""
    if ":" in class_path:
        file, _, name = class_path.rpartition(":")
        path = Path(file).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"reward plug-in {class_path!r}: no file {path}")
        module_name = f"univg_reward_plugin_{path.stem}_{abs(hash(str(path)))}"
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"reward plug-in {class_path!r}: {path} is not a Python file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
    else:
        module_path, _, name = class_path.rpartition(".")
        if not module_path:
            raise ValueError(f"reward plug-in {class_path!r}: expected 'module.Name' or 'file.py:Name'")
        module = importlib.import_module(module_path)
    try:
        return getattr(module, name)
    except AttributeError:
        raise ValueError(f"reward plug-in {class_path!r}: {module.__name__} has no {name!r}") from None


def build_plugin(name: str, plugin: RewardPlugin) -> RewardFn:
    """The callable of plug-in ``name``."""
    obj = _import_object(plugin.class_path)
    if inspect.isclass(obj):
        fn = obj(**plugin.init_args)
        if not callable(fn):
            raise TypeError(f"reward {name!r}: an instance of {plugin.class_path} is not callable")
        return fn
    if not callable(obj):
        raise TypeError(f"reward {name!r}: {plugin.class_path} is neither a class nor a function")
    return functools.partial(obj, **plugin.init_args) if plugin.init_args else obj


def resolve_rewards(
    spec: Mapping[str, float | RewardPlugin | Mapping[str, Any]],
) -> tuple[dict[str, float], dict[str, RewardFn]]:
    """``rewards:`` -> (name -> weight, name -> callable); unknown names and bad plug-ins fail here,
    before any rollout."""
    weights: dict[str, float] = {}
    functions: dict[str, RewardFn] = {}
    for name, entry in spec.items():
        if isinstance(entry, Mapping):
            unknown = sorted(set(entry) - set(_PLUGIN_KEYS))
            if unknown or "class_path" not in entry:
                raise ValueError(
                    f"rewards.{name}: a plug-in takes the keys {_PLUGIN_KEYS} with class_path required, "
                    f"got {sorted(entry)}"
                )
            entry = RewardPlugin(**entry)
        if isinstance(entry, RewardPlugin):
            functions[name] = build_plugin(name, entry)
            weights[name] = float(entry.weight)
        else:
            functions[name] = get_reward(name)  # an unknown name fails here, naming the registered ones
            weights[name] = float(entry)
    return weights, functions
