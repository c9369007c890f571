"""Routing rules: which destinations an incoming instance goes to, and how.

Rules come from `[[routing.rules]]` in the config, are checked and compiled once at
load (never evaluated as code), and are immutable:

    [[routing.rules]]
    name = "ct-to-viewer"                       # required, unique
    when = { all = [ { calling_ae = "CT1" },    # optional; without it: every instance
                     { Modality = { one_of = ["CT", "MR"] } } ] }
    forward = ["VIEWER", "EXPORT"]              # required: destination names
    transfer_syntax = "uncompressed"            # optional: for all, or { VIEWER = "..." }
    changes = [ { prefix = "PatientID", value = "EXT-" } ]   # optional (changes.py)
    deidentify = false                          # optional
    trigger = "instance"                        # or "series" / "study" (once stable)
    stable_seconds = 60                         # series/study only; default 60

`route()` is called for each stored instance: every rule whose condition holds
adds its destinations, in rule order, and the first rule that names a destination
decides how the instance is sent there (later ones are ignored for it).  The
transfer syntax for a destination is the rule's (per destination, else for all),
else the destination's own, else "as-stored".  Changes and de-identification apply
to the copy sent, never to the archived instance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from pydicom.datadict import tag_for_keyword

from engine.routing.changes import AttributeChange, apply_changes, parse_changes
from engine.routing.conditions import (
    ALWAYS, CONTEXT_SUBJECTS, Condition, RoutingContext, parse_condition)
from engine.routing.destinations import Destination, transfer_syntax
from engine.routing.schema import (
    boolean, fail, number, only_keys, string, strings, table)

__all__ = ["Forward", "Rule", "RoutingContext", "AttributeChange", "CONTEXT_SUBJECTS",
           "TRIGGERS", "parse_rules", "route", "wanted_keywords", "wanted_tags",
           "apply_changes"]

#: When a destination gets an instance: at once, or once its series / study is stable.
TRIGGERS = ("instance", "series", "study")
#: Seconds without a new instance before a series / study counts as stable, by default.
DEFAULT_STABLE_SECONDS = 60.0
#: Longest stable_seconds accepted (a week): longer is a typo, and holds the queue.
MAX_STABLE_SECONDS = 7 * 86400.0

_RULE_KEYS = ("name", "when", "forward", "transfer_syntax", "changes", "deidentify", "trigger",
              "stable_seconds")


@dataclass(frozen=True)
class Forward:
    """One destination an instance must reach, and how.

    The fields are those of the forward queue's order (`index/forward_queue.ForwardOrder`):
    `dataclasses.asdict(forward)` is its keyword arguments, with `changes` as JSON
    objects (`AttributeChange.to_json`; back with `changes_from_json`).  The sender
    builds the copy it sends by de-identifying first (when asked), then applying
    `changes`, so a rule can put values back (e.g. a pseudonym) after the profile.
    """

    destination: str
    #: Name of the rule that decided this forward.
    rule: str
    #: "as-stored", "uncompressed" or "jpeg2000-lossless".
    transfer_syntax: str = "as-stored"
    changes: tuple[AttributeChange, ...] = ()
    deidentify: bool = False
    #: "instance", "series" or "study".
    trigger: str = "instance"
    #: For series / study triggers: seconds without a new instance before sending.
    stable_seconds: float = 0.0


@dataclass(frozen=True)
class Rule:
    name: str
    when: Condition
    #: One per destination named in `forward`, in that order, fully resolved.
    forwards: tuple[Forward, ...]

    def matches(self, context: RoutingContext) -> bool:
        return self.when.matches(context)


def route(rules: Iterable[Rule], context: RoutingContext) -> list[Forward]:
    """Where this instance goes: one Forward per destination, in rule order.

    Never raises for any context (values are only compared, never interpreted).
    """
    result: list[Forward] = []
    seen: set[str] = set()
    for rule in rules:
        if not rule.when.matches(context):
            continue
        for forward in rule.forwards:
            if forward.destination not in seen:
                seen.add(forward.destination)
                result.append(forward)
    return result


def wanted_keywords(rules: Iterable[Rule]) -> frozenset[str]:
    """Attribute keywords the rules' conditions look at: what ingest must extract."""
    return frozenset().union(*(rule.when.keywords() for rule in rules))


def wanted_tags(rules: Iterable[Rule]) -> tuple[int, ...]:
    """`wanted_keywords` as sorted tags, for the ingest tag scanner."""
    return tuple(sorted(tag_for_keyword(k) for k in wanted_keywords(rules)))


# --- parsing ----------------------------------------------------------------------------------
def parse_rules(raw: Any, destinations: Mapping[str, Destination]) -> tuple[Rule, ...]:
    """`[[routing.rules]]` as rules, checked against the known destinations.

    Raises RoutingConfigError naming the rule (by name, else by position) and the field.
    """
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise fail("rules", "expected an array of tables ([[routing.rules]])")
    rules: list[Rule] = []
    names: set[str] = set()
    for index, item in enumerate(raw):
        where = f"rule #{index + 1}"
        body = table(item, where)
        name = body.get("name")
        if isinstance(name, str) and name.strip():
            where = f"rule {name.strip()!r}"
        rule = _parse_rule(body, destinations, where)
        if rule.name in names:
            raise fail(where, "another rule has the same name")
        names.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def _parse_rule(body: Mapping[str, Any], destinations: Mapping[str, Destination],
                where: str) -> Rule:
    only_keys(body, _RULE_KEYS, where)
    if "name" not in body:
        raise fail(where, "a rule needs a name")
    name = string(body["name"], f"{where}: name", empty=False).strip()
    when = parse_condition(body["when"], f"{where}: when") if "when" in body else ALWAYS

    if "forward" not in body:
        raise fail(where, "a rule needs forward = [\"DESTINATION\", ...]")
    targets = strings(body["forward"], f"{where}: forward")
    for target in targets:
        if target not in destinations:
            known = ", ".join(sorted(destinations)) or "none defined"
            raise fail(f"{where}: forward", f"unknown destination {target!r} "
                                           f"([routing.destinations]: {known})")
    if len(set(targets)) != len(targets):
        raise fail(f"{where}: forward", "a destination is named twice")

    syntaxes = _parse_transfer_syntaxes(body.get("transfer_syntax"), targets,
                                        f"{where}: transfer_syntax")
    changes = parse_changes(body.get("changes", []), f"{where}: changes")
    deidentify = boolean(body.get("deidentify", False), f"{where}: deidentify")

    trigger = body.get("trigger", "instance")
    if trigger not in TRIGGERS:
        raise fail(f"{where}: trigger", f"must be one of {', '.join(TRIGGERS)}, got {trigger!r}")
    if trigger == "instance":
        if "stable_seconds" in body:
            raise fail(f"{where}: stable_seconds", "applies only to trigger \"series\" or "
                                                  "\"study\"")
        stable = 0.0
    else:
        stable = number(body.get("stable_seconds", DEFAULT_STABLE_SECONDS),
                        f"{where}: stable_seconds")
        if not 0 < stable <= MAX_STABLE_SECONDS:
            raise fail(f"{where}: stable_seconds",
                       f"must be above 0 and at most {MAX_STABLE_SECONDS:g}")

    forwards = tuple(
        Forward(destination=target, rule=name,
                transfer_syntax=syntaxes.get(target, destinations[target].transfer_syntax),
                changes=changes, deidentify=deidentify, trigger=trigger, stable_seconds=stable)
        for target in targets)
    return Rule(name=name, when=when, forwards=forwards)


def _parse_transfer_syntaxes(raw: Any, targets: Sequence[str], where: str) -> dict[str, str]:
    """The rule's transfer syntax per destination (absent: the destination decides)."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        return {target: transfer_syntax(raw, where) for target in targets}
    per_destination = table(raw, where)
    for target, value in per_destination.items():
        if target not in targets:
            raise fail(where, f"{target!r} is not one of this rule's forward destinations")
    return {target: transfer_syntax(value, f"{where}.{target}")
            for target, value in per_destination.items()}
