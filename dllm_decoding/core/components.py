"""Components: named, option-carrying implementations of one hook point.

A plugin module registers component classes through the ``dllm_decoding_register_components``
hook. A strategy names components by ``name``; the core instantiates each with its validated
``Options`` and registers the instances with a per-strategy plugin manager.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

HookPoint = Literal["fuse", "score", "select", "remask", "observer"]
HOOK_POINTS: tuple[str, ...] = ("fuse", "score", "select", "remask", "observer")


class NoOptions(BaseModel):
    """Options model of a component that takes none."""

    model_config = ConfigDict(extra="forbid")


class Component:
    """Base class of every decoding component.

    Subclasses set ``name`` (how strategies refer to it), ``hook_point`` (which of ``fuse``,
    ``score``, ``select``, ``remask`` it implements, or ``observer`` for lifecycle-only
    components), optionally an ``Options`` pydantic model (``extra="forbid"``), and implement the
    hook method of that name decorated with :data:`dllm_decoding.hookimpl`. They may implement
    any lifecycle hook as well.
    """

    name: ClassVar[str]
    hook_point: ClassVar[HookPoint]
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel | None = None, **kwargs: Any) -> None:
        if options is None:
            options = self.Options(**kwargs)
        elif kwargs:
            raise TypeError("pass either an options object or keyword options, not both")
        self.options = options

    @cached_property
    def state_key(self) -> str:
        """Key of this instance's per-decode memory in ``state.plugin_state``."""
        return f"{self.name}@{id(self):x}"

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())
        return f"{type(self).__name__}({opts})"
