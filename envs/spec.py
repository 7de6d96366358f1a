"""An env spec: a named (env id, kwargs) pair, the unit that suites and ``make_env`` work with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from rims_rl.envs.registry import EnvFamily, family_of_id


@dataclass(frozen=True, eq=True)
class EnvSpec:
    """``name`` labels the variant in results; ``kwargs`` go to the family's builders.

    The id is validated and its family resolved once, when the spec is created (``ValueError`` with the
    closest valid ids for an unknown one); a spec derived with ``with_kwargs`` keeps the family.
    """

    name: str
    env_id: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    family: EnvFamily = field(default=None, compare=False, repr=False, kw_only=True)  # type: ignore[assignment]
    """The env's family, resolved from the id at creation (pass it only when already resolved)."""

    def __post_init__(self) -> None:
        if self.family is None:
            object.__setattr__(self, "family", family_of_id(self.env_id))
        elif not self.family.owns(self.env_id):
            raise ValueError(f"{self.env_id!r} is not an id of the {self.family.name} env family")

    def with_kwargs(self, kwargs: Mapping[str, Any], name: str | None = None) -> EnvSpec:
        """The same env (family already resolved) with other kwargs, and optionally another name."""
        return replace(self, kwargs=dict(kwargs), name=self.name if name is None else name)
