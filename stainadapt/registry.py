"""Plugin groups discovered through ``importlib.metadata`` entry points.

Built-in plugins are declared in stainadapt's own ``pyproject.toml`` exactly as a third
party declares theirs, so the path outsiders use is the one the project exercises daily.

Discovery is lazy: listing a group reads entry-point metadata only; a plugin's module is
imported when the plugin is created (or when ``list_plugins(load=True)`` asks for its
status). A plugin whose import fails is reported with its package and error, and never
takes the others down. ``STAINADAPT_DISABLE_PLUGINS=name,group:name`` blocks plugins, as
pytest's ``-p no:NAME`` does. Scripts and notebooks add a plugin without packaging it
with :func:`register`.

A plugin is a factory (a function or a class). Its keyword parameters are its options,
which a spec string sets: ``"single:layer=f9,weight=0.05"``. Positional parameters before
them are context the engine passes (for discriminators: the feature-map table of G).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from .errors import PluginError

__all__ = [
    "GROUPS",
    "PluginInfo",
    "create",
    "get_factory",
    "list_plugins",
    "parse_spec",
    "plugin_options",
    "plugin_names",
    "clear_cache",
    "register",
]

GROUPS: dict[str, str] = {
    "backbones": "stainadapt.backbones",
    "discriminators": "stainadapt.discriminators",
    "normalizers": "stainadapt.normalizers",
}


@dataclass
class PluginInfo:
    """One discovered plugin: where it comes from and whether it loads."""

    group: str
    name: str
    value: str
    package: str
    version: str
    status: str = "not loaded"  # "ok", "error", "disabled", "duplicate", "not loaded"
    error: str | None = None
    factory: Callable[..., Any] | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "name": self.name,
            "package": self.package,
            "version": self.version,
            "value": self.value,
            "status": self.status,
            "error": self.error,
        }


_cache: dict[str, dict[str, PluginInfo]] = {}
# Plugins registered in-process with register() (scripts, notebooks): group -> name -> factory
_registered: dict[str, dict[str, Callable[..., Any]]] = {}


def clear_cache() -> None:
    """Forget discovered plugins (after installing one at run time, and in tests)."""
    _cache.clear()
    importlib.invalidate_caches()  # importlib.metadata caches directory listings too


def _short_group(group: str) -> str:
    if group in GROUPS:
        return group
    for short, full in GROUPS.items():
        if group == full:
            return short
    raise PluginError(f"unknown plugin group {group!r}; groups: {', '.join(GROUPS)}")


def _disabled() -> set[str]:
    raw = os.environ.get("STAINADAPT_DISABLE_PLUGINS", "")
    return {item.strip() for item in raw.split(",") if item.strip()}


def _entry_points(full_group: str) -> Iterable[metadata.EntryPoint]:
    return metadata.entry_points(group=full_group)


def _discover(group: str) -> dict[str, PluginInfo]:
    """Read the entry points of one group (no plugin module is imported here)."""
    group = _short_group(group)
    if group in _cache:
        return _cache[group]
    disabled = _disabled()
    found: dict[str, PluginInfo] = {}
    seen_values: set[tuple[str, str]] = set()
    for ep in _entry_points(GROUPS[group]):
        dist = getattr(ep, "dist", None)
        package = dist.metadata["Name"] if dist is not None else "?"
        version = dist.version if dist is not None else "?"
        # The same distribution can be visible twice (an editable install plus a stale
        # egg-info); that is one plugin, not a clash.
        if (ep.name, ep.value) in seen_values:
            continue
        seen_values.add((ep.name, ep.value))
        info = PluginInfo(group, ep.name, ep.value, package, version)
        if ep.name in disabled or f"{group}:{ep.name}" in disabled:
            info.status = "disabled"
        if ep.name in found:
            other = found[ep.name]
            message = (
                f"{group} plugin {ep.name!r} is registered by two packages: "
                f"{other.package} ({other.value}) and {package} ({ep.value}); "
                "uninstall one of them or disable one with STAINADAPT_DISABLE_PLUGINS"
            )
            for clash in (other, info):
                clash.status = "duplicate"
                clash.error = message
            found[f"{ep.name}@{package}"] = info
            continue
        found[ep.name] = info
    for name, factory in _registered.get(group, {}).items():
        value = f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', '?')}"
        info = PluginInfo(group, name, value, "(registered)", "-", factory=factory)
        info.status = "disabled" if name in disabled or f"{group}:{name}" in disabled else "ok"
        if name in found:  # a package installed after register() was called
            other = found[name]
            message = (f"{group} plugin {name!r} is registered by register() ({value}) and "
                       f"installed by {other.package} ({other.value}); use another name")
            for clash in (other, info):
                clash.status = "duplicate"
                clash.error = message
            found[f"{name}@registered"] = info
            continue
        found[name] = info
    _cache[group] = found
    return found


def register(group: str, name: str, factory: Callable[..., Any]) -> Callable[..., Any]:
    """Make ``factory`` a plugin of ``group`` in this process, without packaging it.

    The way for scripts and notebooks; packages declare an entry point instead (see
    ``docs/plugins.md``)::

        from stainadapt.registry import register
        register("discriminators", "patch", PatchDiscriminator)
        # now --disc / TrainConfig(discs=["patch:width=16"]) and create() find it

    Registering the same name again replaces the earlier registration (re-running a
    notebook cell); a name an installed package already provides is refused, unless it
    is the very same factory (``module:name``), which is then left to the package. The
    registration lives in this process only: ``stainadapt train`` in another process,
    and resuming the run there, need the plugin registered there too (or packaged).
    ``STAINADAPT_DISABLE_PLUGINS`` applies as for installed plugins. Returns ``factory``.
    """
    group = _short_group(group)
    if not callable(factory):
        raise PluginError(f"register({group!r}, {name!r}, ...): the factory is not callable")
    if not isinstance(name, str) or not name.strip() or name != name.strip() or any(
        c in name for c in ":,=@ "
    ):
        raise PluginError(
            f"register({group!r}, {name!r}, ...): a plugin name is a non-empty word "
            "without spaces or any of : , = @"
        )
    installed = {ep.name: ep for ep in _entry_points(GROUPS[group])}
    if name in installed:
        ep = installed[name]
        where = f"{getattr(factory, '__module__', '')}:{getattr(factory, '__qualname__', '')}"
        if ep.value == where:  # the same factory, already installed as a package
            return factory
        dist = getattr(ep, "dist", None)
        package = dist.metadata["Name"] if dist is not None else "?"
        raise PluginError(
            f"{group} plugin {name!r} is already installed by package {package} "
            f"({ep.value}); register yours under another name"
        )
    _registered.setdefault(group, {})[name] = factory
    _cache.pop(group, None)
    return factory


def _load(info: PluginInfo) -> Callable[..., Any]:
    if info.factory is not None:
        return info.factory
    module_name, _, attr = info.value.partition(":")
    try:
        module = __import__(module_name, fromlist=["_"])
        obj: Any = module
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
    except Exception as exc:  # a broken plugin must not take the others down
        info.status = "error"
        info.error = f"{type(exc).__name__}: {exc}"
        raise PluginError(
            f"{info.group} plugin {info.name!r} from package {info.package} failed to "
            f"load ({info.value}): {info.error}"
        ) from exc
    if not callable(obj):
        info.status = "error"
        info.error = f"{info.value} is not callable"
        raise PluginError(f"{info.group} plugin {info.name!r}: {info.error}")
    info.factory = obj
    info.status = "ok"
    info.error = None
    return obj


def plugin_names(group: str) -> list[str]:
    """Names that can be created in ``group`` (disabled and clashing ones excluded)."""
    return sorted(
        name
        for name, info in _discover(group).items()
        if info.status not in ("disabled", "duplicate")
    )


def list_plugins(group: str | None = None, load: bool = True) -> list[PluginInfo]:
    """Every discovered plugin, with its status; ``load=True`` imports each to check it."""
    groups = [_short_group(group)] if group else list(GROUPS)
    out: list[PluginInfo] = []
    for g in groups:
        for info in _discover(g).values():
            if load and info.status not in ("disabled", "duplicate"):
                with contextlib.suppress(PluginError):  # recorded in info.status
                    _load(info)
            out.append(info)
    return out


def get_factory(group: str, name: str) -> Callable[..., Any]:
    """The factory of one plugin, imported on first use."""
    plugins = _discover(group)
    info = plugins.get(name)
    if info is None:
        known = ", ".join(plugin_names(group)) or "none installed"
        raise PluginError(f"unknown {_short_group(group)} plugin {name!r}; known: {known}")
    if info.status == "disabled":
        raise PluginError(
            f"{info.group} plugin {name!r} is disabled by STAINADAPT_DISABLE_PLUGINS"
        )
    if info.status == "duplicate":
        raise PluginError(info.error or f"duplicate plugin {name!r}")
    return _load(info)


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name:key=value,key=value"`` into the name and typed options.

    Values become int, float, bool (true/false/yes/no/on/off), None (none/null) or str.

    >>> parse_spec("single:layer=f9,weight=0.05")
    ('single', {'layer': 'f9', 'weight': 0.05})
    """
    if not isinstance(spec, str) or not spec.strip():
        raise PluginError(f"empty plugin spec {spec!r}; expected 'name' or 'name:key=value,...'")
    name, sep, rest = spec.strip().partition(":")
    name = name.strip()
    if not name:
        raise PluginError(f"plugin spec {spec!r} has no name before ':'")
    options: dict[str, Any] = {}
    if sep and rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise PluginError(
                    f"bad option {item.strip()!r} in spec {spec!r}; expected key=value"
                )
            if key in options:
                raise PluginError(f"option {key!r} given twice in spec {spec!r}")
            options[key] = _parse_value(value.strip())
    return name, options


def plugin_options(factory: Callable[..., Any], n_context: int = 0) -> dict[str, Any]:
    """The options a factory accepts (keyword parameters after ``n_context``) and defaults."""
    sig = inspect.signature(factory)
    params = [
        p
        for p in sig.parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"
    ]
    return {p.name: (None if p.default is p.empty else p.default) for p in params[n_context:]}


def _accepts_any(factory: Callable[..., Any]) -> bool:
    return any(
        p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values()
    )


def create(group: str, spec: str, *context: Any, **overrides: Any) -> Any:
    """Create a plugin from a spec string: ``create("discriminators", "single:layer=f9", feats)``.

    ``context`` is passed positionally (for discriminators, G's feature table); options
    from the spec, then ``overrides``, are passed as keywords. An option the factory does
    not accept is rejected with the list of those it does.
    """
    name, options = parse_spec(spec)
    options.update(overrides)
    factory = get_factory(group, name)
    if not _accepts_any(factory):
        accepted = plugin_options(factory, n_context=len(context))
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            listing = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "none"
            raise PluginError(
                f"{_short_group(group)} plugin {name!r} has no option "
                f"{', '.join(repr(u) for u in unknown)}; accepted options: {listing}"
            )
    try:
        return factory(*context, **options)
    except PluginError:
        raise
    except (TypeError, ValueError) as exc:
        raise PluginError(f"{_short_group(group)} plugin {name!r}: {exc}") from exc
