"""What a process checks of the cluster before it starts, each refusal one line
(`ConfigurationError`): that a broker answers as the settings connect (`reach`), that its principal
holds what its components need (`permissions`, docs/security.md#acls), and that the topics they write
are replicated as `kafka.min_replication_factor` asks (`durability`)."""

from __future__ import annotations

from pipeline.kafka import acls, clients, durability, permissions, reach
from pipeline.settings import Settings


def check(settings: Settings, *components: str) -> None:
    reach.check(settings)
    admin = clients.admin(settings, clients.QUIET)  # one client for the questions below
    for component in components:
        permissions.check(settings, component, admin=admin)
    durability.check(settings, {n for c in components for n in acls.written(settings, c)}, admin=admin)
