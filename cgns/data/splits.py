"""Deterministic splits and data_pct subsets that are identical on every machine.

Every key (patient id, ImageId, ...) gets a rank from a keyed BLAKE2 hash of (seed, key): ordering keys by it is a
seeded shuffle that does not depend on Python's randomised hash(), the platform, the order rows were read in or on
which other keys are present. Taking a prefix of that order gives nested subsets for growing fractions.
"""
from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence

# Protocol splits use their own fixed seed so a training --seed never moves an image between train and test.
SPLIT_SEED = "cgns-split-v1"


def stable_rank(key: Hashable, seed: int | str) -> int:
    """A 64-bit integer, a deterministic function of (seed, str(key))."""
    digest = hashlib.blake2b(f"{seed}\x1f{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def seeded_order(keys: Sequence[Hashable], seed: int | str) -> list[Hashable]:
    """The distinct keys in seeded pseudo-random order (ties broken by the key itself)."""
    unique = sorted(set(keys), key=str)
    return sorted(unique, key=lambda k: (stable_rank(k, seed), str(k)))


def split_groups(groups: Sequence[Hashable], fractions: dict[str, float], seed: int | str = SPLIT_SEED
                 ) -> dict[str, list[int]]:
    """Assign row indices to named splits so that all rows of a group (e.g. a patient) share one split.

    groups: one group key per row. fractions: split name -> fraction of GROUPS, e.g. {'train': .7, 'valid': .15,
    'test': .15}; the last split takes the remainder. Returns split name -> sorted row indices.
    """
    order = seeded_order(groups, seed)
    names = list(fractions)
    counts, start = {}, 0
    for name in names[:-1]:
        counts[name] = int(round(fractions[name] * len(order)))
    counts[names[-1]] = len(order) - sum(counts.values())
    assignment = {}
    for name in names:
        for key in order[start:start + counts[name]]:
            assignment[key] = name
        start += counts[name]
    result: dict[str, list[int]] = {name: [] for name in names}
    for row, key in enumerate(groups):
        result[assignment[key]].append(row)
    return result



def hold_out_validation(records: list[dict], valid_fraction: float, test_official: str) -> dict[str, list[int]]:
    """Official train rows split by group into train / valid (valid_fraction of the groups); the rows whose
    record["official"] == test_official are the test split. -> split name -> row indices."""
    train_rows = [i for i, r in enumerate(records) if r["official"] == "train"]
    parts = split_groups([records[i]["group"] for i in train_rows],
                         {"valid": valid_fraction, "train": 1.0 - valid_fraction})
    return {"train": [train_rows[j] for j in parts["train"]], "valid": [train_rows[j] for j in parts["valid"]],
            "test": [i for i, r in enumerate(records) if r["official"] == test_official]}

def split_counts(groups: Sequence[Hashable], counts: dict[str, int], rest: str, seed: int | str = SPLIT_SEED
                 ) -> dict[str, list[int]]:
    """Like split_groups but with fixed group counts per named split; `rest` gets every remaining group."""
    order = seeded_order(groups, seed)
    assignment, start = {}, 0
    for name, count in counts.items():
        for key in order[start:start + count]:
            assignment[key] = name
        start += count
    result: dict[str, list[int]] = {name: [] for name in [*counts, rest]}
    for row, key in enumerate(groups):
        result[assignment.get(key, rest)].append(row)
    return result


def subset_size(n: int, fraction: float) -> int:
    """Number of items kept for a fraction: round(fraction * n), at least 1 when n > 0."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data_pct must be in (0, 1], got {fraction}")
    return min(n, max(1 if n else 0, int(round(fraction * n))))


def data_pct_subset(keys: Sequence[Hashable], fraction: float, seed: int) -> list[int]:
    """Row indices of a seeded `fraction` of the rows (TRAINING split only), sorted.

    Nested: the subset for a smaller fraction is contained in the one for a larger fraction with the same seed.
    Keys must be unique per row (e.g. the record id).
    """
    if fraction >= 1.0:
        return list(range(len(keys)))
    position = {key: row for row, key in enumerate(keys)}
    if len(position) != len(keys):
        raise ValueError("data_pct_subset needs one unique key per row")
    order = seeded_order(keys, seed)
    return sorted(position[k] for k in order[:subset_size(len(keys), fraction)])
