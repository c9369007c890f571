"""Person Name (PN) normal forms shared by matching and the name index.

`fold` is the one case- and accent-insensitive form: fuzzy PN matching compares
folded text, and the study index of family names stores folded text, so a
prefix of a folded name is the folded prefix of the name (the fold works
character by character, which is what lets the index answer ``SMI*``).
"""
from __future__ import annotations

import unicodedata

__all__ = ["family_name_keys", "fold", "trim_group"]


def fold(text: str) -> str:
    """Case- and accent-insensitive form: NFKD, combining marks dropped, casefolded.

    Applies to every component group, so in the ideographic and phonetic groups
    voiced kana also fold to their unvoiced forms; that is accepted as part of
    "fuzzy".
    """
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def trim_group(group: str) -> str:
    """Drop padding and trailing empty components: ``DOE^JOHN^^^`` is ``DOE^JOHN``."""
    return group.strip(" ").rstrip("^ ")


def family_name_keys(value: str) -> set[str]:
    """The folded family names of every value and component group of a PN value.

    ``Yamada^Tarou=山田^太郎=やまだ^たろう`` gives three keys, one per group, so a
    key matching any group finds the record.  Empty family names give no key.
    """
    keys = set()
    for single in value.split("\\"):
        for group in single.split("="):
            family = fold(trim_group(group)).split("^", 1)[0]
            if family:
                keys.add(family)
    return keys
