"""``Resources``: what one chain needs from a backend, the one definition for every layer.

The sweep file's ``resources`` section validates into it (as part of the sweep schema, whose
errors name the file), the orchestrator hands it to backends inside each job, and the Slurm
layer turns it into scheduler requests. Built directly (``Resources(cpus=2)``,
:meth:`Resources.from_mapping`), a bad value raises :class:`~clipcl.errors.ClipclError`
naming the key and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clipcl.errors import ClipclError
from clipcl.validation import StrictNumbers, format_validation_error

__all__ = ["Resources"]

#: BaseModel's metaclass, taken from the class itself (its module is pydantic's private one).
_ModelMeta: Any = type(BaseModel)


class _ClipclErrors(_ModelMeta):
    """Turns the ValidationError of a direct construction into a one-line ClipclError.

    Only calls of the class go through here: a ``Resources`` validated as part of another
    model (the sweep file) keeps pydantic's error, which that model's loader formats.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as err:
            raise ClipclError(_message(err, cls)) from None


def _message(err: ValidationError, model: Any) -> str:
    """``resources.<key>: expected <kind> [<bound>], got <value>`` for the first error."""
    e = err.errors()[0]
    if e["type"] == "extra_forbidden" or len(e["loc"]) != 1:
        return format_validation_error(err, model, "resources")
    name = str(e["loc"][0])
    info = model.model_fields[name]
    integer = info.annotation is int
    bound = ""
    for limit in info.metadata:  # the Field's ge/gt constraints
        if getattr(limit, "ge", None) is not None:
            bound = f" >= {limit.ge}"
        elif getattr(limit, "gt", None) is not None:
            bound = f" > {limit.gt}"
    if not (integer or e["type"].startswith(("greater", "less", "value_error"))):
        bound = ""  # not a number at all: say only that
    kind = "an integer" if integer else "a finite number"
    return f"resources.{name}: expected {kind}{bound}, got {e.get('input')!r}"


class Resources(StrictNumbers, metaclass=_ClipclErrors):
    """What one chain needs from a backend (the sweep file's ``resources``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus: int = Field(0, ge=0, description="GPUs per chain (0: CPU).")
    cpus: int = Field(1, ge=1, description="CPU cores per chain.")
    mem_gb: float = Field(8, gt=0, description="Host memory per chain, GiB.")
    timeout_min: int = Field(60, ge=1, description="Wall-clock limit per job, minutes.")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | Any) -> Resources:
        """Build from a mapping, or take a ``Resources`` (or any object with ``model_dump()``).

        Raises:
            ClipclError: An unknown key or a bad value.
        """
        if isinstance(data, Resources):
            return data
        if not isinstance(data, Mapping) and hasattr(data, "model_dump"):
            data = data.model_dump()
        if not isinstance(data, Mapping):
            raise ClipclError(f"resources: expected a mapping, got {data!r}")
        return cls(**{str(k): v for k, v in data.items()})

    @property
    def timeout_s(self) -> float:
        """The wall-clock limit in seconds."""
        return 60.0 * self.timeout_min
