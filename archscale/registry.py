"""Generic plugin registry: one instance per kind of component.

Each kind (architectures, mixers, ...) is a :class:`Registry`. Entries are added with the ``register`` decorator
in archscale itself and, by third-party packages, through the entry-point group ``archscale.<kind>``. Plugins are
discovered lazily (the first time a name is looked up or the registry is listed) and cached; one plugin that fails
to load never breaks ``import archscale``: the failure is remembered and raised, naming the distribution, only when
its entry is used. ``ARCHSCALE_DISABLE_PLUGIN_AUTOLOAD=1`` switches discovery off.

Lessons taken (see docs/DESIGN.md): duplicate names raise with both origins (lm-eval), a decorator registers
(timm) but never overwrites silently, unknown names get a did-you-mean list (difflib), entry points are loaded
on demand (pluggy, xarray).

This module imports nothing else from archscale.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")

DISABLE_AUTOLOAD_ENV = "ARCHSCALE_DISABLE_PLUGIN_AUTOLOAD"
ENTRY_POINT_PREFIX = "archscale."


class RegistryError(LookupError):
    """Base class of registry errors (unknown name, duplicate name, broken plugin)."""


class UnknownEntryError(RegistryError, KeyError):
    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


class DuplicateEntryError(RegistryError):
    pass


class PluginLoadError(RegistryError):
    pass


class EmptyConfig(BaseModel):
    """Config of an entry that takes no parameters: any parameter given is an error."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Entry(Generic[T]):
    """One registered component: the object, its config model and where it came from."""

    name: str
    origin: str  # "archscale", a module path, or "plugin <distribution> (<entry point value>)"
    config: type[BaseModel]
    _obj: T | None = None
    _loader: Callable[[], T] | None = None  # set for entry points not loaded yet
    _error: BaseException | None = field(default=None, repr=False)

    @property
    def obj(self) -> T:
        if self._obj is None:
            if isinstance(self._error, RegistryError):  # e.g. a plugin clashing with an existing name
                raise self._error
            if self._error is not None:
                raise PluginLoadError(self._error_message()) from self._error
            assert self._loader is not None
            try:
                self._obj = self._loader()
            except Exception as exc:  # a broken plugin must only break its own entries
                self._error = exc
                raise PluginLoadError(self._error_message()) from exc
            self.config = _config_of(self._obj, self.config)
        return self._obj

    @property
    def loaded(self) -> bool:
        return self._obj is not None

    def _error_message(self) -> str:
        return (
            f"Could not load '{self.name}' from {self.origin}: {type(self._error).__name__}: {self._error}. "
            f"Fix or uninstall that distribution, or set {DISABLE_AUTOLOAD_ENV}=1 to skip all plugins."
        )


def _config_of(obj: Any, explicit: type[BaseModel] | None) -> type[BaseModel]:
    """The config model of an entry: given explicitly, else the object's ``Config`` attribute, else empty."""
    if explicit is not None and explicit is not EmptyConfig:
        return explicit
    candidate = getattr(obj, "Config", None)
    if isinstance(candidate, type) and issubclass(candidate, BaseModel):
        return candidate
    return EmptyConfig


class Registry(Generic[T]):
    """A name → component mapping for one kind, extended by the entry-point group ``archscale.<kind>``.

    >>> schedules = Registry("schedules", label="schedule")
    >>> @schedules.register("constant")
    ... def constant(progress: float) -> float:
    ...     return 1.0
    >>> schedules.get("constant")(0.5)
    1.0
    """

    def __init__(self, kind: str, *, label: str | None = None, builtin_modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.label = label or kind  # human name used in messages: "token mixer"
        self.group = ENTRY_POINT_PREFIX + kind
        self._entries: dict[str, Entry[T]] = {}
        # Modules of archscale itself whose import registers the built-in entries; imported on first use so
        # that `import archscale` stays cheap (no torch model code imported for `archscale list --help`).
        self._builtin_modules = builtin_modules
        self._builtins_loaded = not builtin_modules
        self._plugins_discovered = False

    # ---------------------------------------------------------------- registering
    def register(
        self, name: str, *, config: type[BaseModel] | None = None, origin: str | None = None
    ) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name``. ``config`` is the pydantic model of its params
        (default: ``obj.Config`` if it is one, else no params allowed)."""
        _check_name(name, self.label)

        def decorator(obj: T) -> T:
            where = origin or _origin_of(obj)
            self._add(Entry(name=name, origin=where, config=_config_of(obj, config), _obj=obj))
            return obj

        return decorator

    def register_lazy(self, name: str, target: str, *, origin: str | None = None) -> None:
        """Register ``"module:attr"`` to be imported only when the entry is first used."""
        _check_name(name, self.label)
        self._add(Entry(name=name, origin=origin or target, config=EmptyConfig, _loader=lambda: _import(target)))

    def unregister(self, name: str) -> None:
        """Remove an entry (tests and interactive sessions use this to replace one deliberately)."""
        self._entries.pop(name, None)

    def _add(self, entry: Entry[T]) -> None:
        existing = self._entries.get(entry.name)
        if existing is not None:
            raise DuplicateEntryError(
                f"Duplicate {self.label} name '{entry.name}': already registered by {existing.origin}, "
                f"registered again by {entry.origin}. Choose another name, or call "
                f"{self.kind}.unregister('{entry.name}') first to replace it on purpose."
            )
        self._entries[entry.name] = entry

    # ---------------------------------------------------------------- looking up
    def entry(self, name: str) -> Entry[T]:
        self._ensure_loaded()
        found = self._entries.get(name)
        if found is None:
            raise UnknownEntryError(self.unknown_message(name))
        return found

    def get(self, name: str) -> T:
        """The registered object itself (loading its plugin if needed)."""
        return self.entry(name).obj

    def config_model(self, name: str) -> type[BaseModel]:
        entry = self.entry(name)
        if not entry.loaded:
            entry.obj  # noqa: B018 - load it so that its config model is known
        return entry.config

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        self._ensure_loaded()
        return [self._entries[n] for n in sorted(self._entries)]

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"

    def unknown_message(self, name: str) -> str:
        available = sorted(self._entries)
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
        # Prefix matches ("mamba" -> "mamba1", "mamba2") are what people mean more often than edit distance says.
        close += [n for n in available if n.startswith(name) and n not in close and name]
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        listing = ", ".join(available) if available else "(none registered)"
        return f"Unknown {self.label} '{name}'.{hint} Available: {listing}"

    # ---------------------------------------------------------------- discovery
    def _ensure_loaded(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in self._builtin_modules:
                importlib.import_module(module)
        if not self._plugins_discovered:
            self._plugins_discovered = True
            if os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no"):
                return
            self._discover_plugins()

    def _discover_plugins(self) -> None:
        for ep in metadata.entry_points(group=self.group):
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            origin = f"plugin {dist} ({ep.value})"
            if ep.name in self._entries:
                existing = self._entries[ep.name]
                if existing.origin == origin:  # the same distribution seen twice on sys.path
                    continue
                # A clash must be visible when the name is used, but must not break everything else.
                clash = DuplicateEntryError(
                    f"Duplicate {self.label} name '{ep.name}': already registered by {existing.origin}, "
                    f"registered again by {origin}."
                )
                self._entries[ep.name] = Entry(name=ep.name, origin=origin, config=EmptyConfig, _error=clash)
                continue
            self._entries[ep.name] = Entry(name=ep.name, origin=origin, config=EmptyConfig, _loader=ep.load)

    def rediscover(self) -> None:
        """Forget discovered plugins and look again (after installing a plugin in a running process)."""
        for name in [n for n, e in self._entries.items() if e.origin.startswith("plugin ")]:
            del self._entries[name]
        self._plugins_discovered = False


def _check_name(name: str, label: str) -> None:
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"A {label} name must be a non-empty string without surrounding spaces, got {name!r}")


def _origin_of(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "unknown module"
    qualname = getattr(obj, "__qualname__", type(obj).__name__)
    return f"{module}:{qualname}"


def _import(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


# One registry per kind. The built-in entries live in the modules named here and register on first use.
architectures: Registry[Any] = Registry(
    "architectures", label="architecture", builtin_modules=("archscale.models.archs",)
)
mixers: Registry[Any] = Registry("mixers", label="token mixer", builtin_modules=("archscale.models.mixers",))
parametrizations: Registry[Any] = Registry(
    "parametrizations", label="parametrization", builtin_modules=("archscale.scaling.parametrization",)
)
scaling_laws: Registry[Any] = Registry(
    "scaling_laws", label="scaling law", builtin_modules=("archscale.scaling.laws",)
)
optimizers: Registry[Any] = Registry(
    "optimizers", label="optimizer", builtin_modules=("archscale.optim.optimizers", "archscale.optim.muon")
)
schedules: Registry[Any] = Registry("schedules", label="schedule", builtin_modules=("archscale.optim.schedules",))
# Named recipes (functions returning a Recipe), so that `archscale train default` needs no file path.
recipes: Registry[Any] = Registry("recipes", label="recipe", builtin_modules=("archscale.recipes",))

ALL_REGISTRIES: dict[str, Registry[Any]] = {
    r.kind: r for r in (architectures, mixers, parametrizations, scaling_laws, optimizers, schedules, recipes)
}
