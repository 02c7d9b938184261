"""Entity markers for relation extraction: their names, and their place in the vocabulary.

Entity masking (the paper's setup, "ner" mode of its ``run_tacred.py``): the subject's words are
replaced by one marker ``[SUBJ-<subj_type>]``, the object's by ``[OBJ-<obj_type>]``::

    [CLS] [SUBJ-PERSON] was born in [OBJ-CITY] , Michigan [SEP]

Markers are vocabulary entries, not text: sorted (every ``SUBJ`` marker by type, then every
``OBJ`` marker) they take the vocabulary's free ``[unusedN]`` entries in id order, so the
checkpoint keeps its vocabulary size; when none are left, the marker itself is added to the
tokenizer and the word embeddings grow by one row (normal(0, initializer_range)). The mapping
(marker -> vocabulary token and id, in that order) and the label list are saved in
``task.json``, so a reloaded model tokenizes exactly as it was trained. Ids of the other words
are never marker ids (an added marker typed in the text becomes ``[UNK]``).
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Sequence

SUBJECT, OBJECT = "SUBJ", "OBJ"
UNUSED_TOKEN = re.compile(r"\[unused\d+\]")
ENTITY_TYPE = re.compile(r"[^\s\[\]]+")  # a marker is "[SUBJ-" + type + "]": no spaces or brackets in the type


def marker_name(role: str, entity_type: str) -> str:
    """``[SUBJ-PERSON]`` for ``("SUBJ", "PERSON")``."""
    return f"[{role}-{entity_type}]"


def marker_role(marker: str) -> Optional[str]:
    """``"SUBJ"`` / ``"OBJ"`` for a well-formed marker name, else None."""
    for role in (SUBJECT, OBJECT):
        if marker.startswith(f"[{role}-") and marker.endswith("]") and ENTITY_TYPE.fullmatch(marker[len(role) + 2:-1]):
            return role
    return None


def check_entity_markers(markers: Dict[str, dict]) -> Dict[str, dict]:
    """``markers`` with ids as ints; ValueError for a bad name, a repeated token or id."""
    checked = {}
    for marker, entry in markers.items():
        if marker_role(marker) is None:
            raise ValueError(f"entity marker {marker!r} is not [SUBJ-<TYPE>] or [OBJ-<TYPE>]")
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str) or \
                isinstance(entry.get("id"), bool) or not isinstance(entry.get("id"), int) or entry["id"] < 0:
            raise ValueError(f"entity marker {marker!r} needs {{'token': str, 'id': int >= 0}}, got {entry!r}")
        checked[marker] = {"token": entry["token"], "id": entry["id"]}
    for key in ("token", "id"):
        values = [v[key] for v in checked.values()]
        if len(set(values)) != len(values):
            raise ValueError(f"entity markers share a vocabulary {key}: {checked}")
    return checked



def assign_entity_markers(markers: Sequence[str], vocabulary: Sequence[str], vocab_size: int,
                          saved: Optional[Dict[str, dict]] = None) -> Dict[str, dict]:
    """The marker mapping: ``saved`` entries first (kept as they are), then each new marker of
    ``markers`` (sorted: subject markers by type, then object markers) on the next free
    ``[unusedN]`` entry of ``vocabulary`` (tokens indexed by id), and past those on the marker
    itself at ids ``vocab_size``, ``vocab_size + 1`` ... (the tokenizer and embeddings grow)."""
    mapping = check_entity_markers(dict(saved or {}))
    taken = {v["id"] for v in mapping.values()}
    free = (i for i, token in enumerate(vocabulary) if UNUSED_TOKEN.fullmatch(token) and i not in taken)
    grown = max([vocab_size - 1, *taken]) + 1
    new = sorted(set(markers) - set(mapping), key=lambda m: (marker_role(m) != SUBJECT, m))
    for marker in new:
        index = next(free, None)
        if index is None:
            mapping[marker], grown = {"token": marker, "id": grown}, grown + 1
        else:
            mapping[marker] = {"token": vocabulary[index], "id": index}
    return mapping


def add_marker_tokens(tokenizer, entity_markers: Dict[str, dict]) -> None:
    """Make ``tokenizer`` hold every marker's token at its id: markers past the vocabulary are added
    (as special tokens, in id order); a token found elsewhere is a ValueError (wrong tokenizer)."""
    for marker, entry in sorted(entity_markers.items(), key=lambda item: item[1]["id"]):
        found = tokenizer.token_to_id(entry["token"])
        if found is None and entry["id"] == tokenizer.get_vocab_size(with_added_tokens=True):
            tokenizer.add_special_tokens([entry["token"]])
            found = tokenizer.token_to_id(entry["token"])
        if found != entry["id"]:
            raise ValueError(f"the tokenizer does not match the model's entity markers: {marker} is "
                             f"{entry['token']!r} with id {entry['id']} in task.json, id {found} in the tokenizer; "
                             "use the tokenizer saved with the model")

