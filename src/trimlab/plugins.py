"""What packages other than trimlab add to it, found through entry points.

A package registers a method under the group ``trimlab.methods`` and a token
selector's stored form under ``trimlab.selectors`` (see the README's "Add a
method of your own"). A plugin that fails to load or clashes with a name
already taken is skipped with one warning naming its entry point and
distribution: a broken package never stops trimlab for everything else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

log = logging.getLogger(__name__)


class PluginError(Exception):
    """A plugin that loaded but cannot be registered; the message says why."""


def plugin_source(ep: EntryPoint) -> str:
    """How a warning names an entry point: its line in the group and the distribution that declares it."""
    dist = ep.dist.name if ep.dist is not None else "an unknown distribution"
    return f"{ep.group} entry point '{ep.name} = {ep.value}' of {dist}"


def load_plugins(group: str, register: Callable[[EntryPoint, Any], None]) -> None:
    """Load each entry point of ``group`` and hand it to ``register`` (which raises :class:`PluginError` to refuse it);
    a plugin that fails either way is skipped with a warning."""
    for ep in entry_points(group=group):
        try:
            register(ep, ep.load())
        except Exception as err:  # noqa: BLE001 — any failure of someone else's package: skip it, say why
            reason = (str(err).splitlines() or [""])[0] or type(err).__name__
            kind = "" if isinstance(err, PluginError) else f"{type(err).__name__}: "
            log.warning("trimlab: skipped the plugin %s: %s%s", plugin_source(ep), kind, reason)
