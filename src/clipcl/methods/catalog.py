"""What each registered method is, without importing it (or torch): its config class, whether it
trains, its paper train defaults and the module that holds its ``Method`` class.

Sweeps are expanded and specs validated from this catalog; a method's module is imported only
when a chain runs it (:func:`clipcl.methods.registry.method_class`). Registering a class
(``@register_method``) checks that it agrees with its entry here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clipcl.errors import unknown_name
from clipcl.methods import configs as c


@dataclass(frozen=True)
class MethodInfo:
    """A method as the planner sees it.

    Attributes:
        name: Registry key (``finetune``, ``wise-ft``, ...).
        module: Module under ``clipcl.methods`` that defines and registers the class.
        config: The method's ``MethodConfig`` subclass.
        trains: False for methods that only evaluate (training knobs do not apply).
        train_defaults: ``TrainConfig`` values the method's paper uses.
    """

    name: str
    module: str
    config: type[c.MethodConfig]
    trains: bool = True
    train_defaults: Mapping[str, Any] = field(default_factory=dict)


_METHODS: dict[str, MethodInfo] = {
    info.name: info
    for info in [
        MethodInfo("dmnsp", "dmnsp", c.DMNSPConfig, train_defaults=c.DMNSP_TRAIN_DEFAULTS),
        MethodInfo("finetune", "finetune", c.FinetuneConfig),
        MethodInfo("gpm", "gpm", c.GPMConfig, train_defaults=c.GPM_TRAIN_DEFAULTS),
        MethodInfo("icarl", "icarl", c.IcarlConfig),
        MethodInfo("joint", "joint", c.JointConfig),
        MethodInfo("lora", "lora", c.LoRAConfig),
        MethodInfo("ogd", "ogd", c.OGDConfig),
        MethodInfo("nsp2", "nsp2", c.NSP2Config, train_defaults=c.NSP2_TRAIN_DEFAULTS),
        MethodInfo("pgp", "pgp", c.PGPConfig, train_defaults=c.PGP_TRAIN_DEFAULTS),
        MethodInfo("wise-ft", "wiseft", c.WiSEFTConfig),
        MethodInfo("zeroshot", "zeroshot", c.MethodConfig, trains=False),
        MethodInfo("zscl", "zscl", c.ZSCLConfig),
        MethodInfo("lwf", "zscl", c.LwFConfig),
        MethodInfo("l2", "zscl", c.L2Config),
        MethodInfo("we", "zscl", c.WEConfig),
    ]
}


def method_info(name: str) -> MethodInfo:
    """The catalog entry of ``name``; raises ``ClipclError`` for an unknown method."""
    if name not in _METHODS:
        raise unknown_name("method", name, _METHODS)
    return _METHODS[name]


def catalogued() -> frozenset[str]:
    """Names of the methods in the catalog (registered or not)."""
    return frozenset(_METHODS)


def method_names() -> list[str]:
    return sorted(_METHODS)


def declare_method(info: MethodInfo) -> None:
    """Add ``info`` (a registration); a catalogued method must match its entry."""
    known = _METHODS.get(info.name)
    if known is not None and (
        known.config is not info.config
        or known.trains != info.trains
        or dict(known.train_defaults) != dict(info.train_defaults)
    ):
        raise RuntimeError(f"method '{info.name}' does not match clipcl.methods.catalog")
    _METHODS[info.name] = known or info
