"""Every schema in Hydra's ConfigStore: the run-level ones (:mod:`trimlab.config`), each method's, and plugins' options.

A module of its own because it imports the methods, whose schemas import
:mod:`trimlab.config`: so :mod:`trimlab.config` never imports the methods.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from trimlab.config import SCHEMAS, TrimlabConfig
from trimlab.methods import method_kinds, plugin_methods


def register_configs() -> None:
    """Put every schema in Hydra's ConfigStore (idempotent): the run-level ones, then each method's, then the
    ``method=`` options of plugins (their YAML nodes: Hydra composes them as it does ``conf/method/*.yaml``)."""
    cs = ConfigStore.instance()
    cs.store(name="trimlab_schema", node=TrimlabConfig)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(group=group, name=name, node=node)
    for kind in method_kinds().values():
        cs.store(group="method", name=kind.schema_name, node=kind.schema)
    for name, node in plugin_methods()[1].items():
        cs.store(group="method", name=name, node=node)
