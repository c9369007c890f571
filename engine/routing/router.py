"""The rules as ingest sees them: forwards for each received instance.

Ingest calls `route()` once per instance, before the index commit that
queues its forward jobs (so an acknowledged instance is always forwarded),
and `queued()` after that commit, which wakes the destinations' workers.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Mapping

from engine.index.forward_queue import ForwardOrder
from engine.routing.conditions import RoutingContext
from engine.routing.rules import Rule, route, wanted_tags


class RuleRouter:
    def __init__(self, rules: Iterable[Rule], wake: Callable[[set[str]], None]) -> None:
        self.rules = tuple(rules)
        self._wake = wake
        #: Tags the rules read that the index does not (ingest's scanner extracts them too).
        self.extra_tags: tuple[int, ...] = wanted_tags(self.rules)

    def route(self, origin, sop_class_uid: str,
              attributes: Mapping[str, object]) -> tuple[ForwardOrder, ...]:
        context = RoutingContext(
            origin.calling_ae_title, origin.called_ae_title, origin.peer_ip, sop_class_uid,
            {k: str(v) for k, v in attributes.items()})
        orders = []
        for forward in route(self.rules, context):
            fields = asdict(forward)
            fields["changes"] = tuple(change.to_json() for change in forward.changes)
            orders.append(ForwardOrder(**fields))
        return tuple(orders)

    def queued(self, forwards: tuple[ForwardOrder, ...]) -> None:
        self._wake({order.destination for order in forwards})


def routing_secret(data_dir: Path) -> str:
    """The key of de-identification UID remapping, made once per archive (mode 0600).

    Stable across restarts, so a study de-identified today maps to the same UIDs
    as its instances routed tomorrow.
    """
    path = Path(data_dir) / "routing-secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    secret = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return secret


__all__ = ["RuleRouter", "routing_secret"]
