"""The benchmark's methods: each name and the `train_pretrain.py` flags that select it, in one table.

A method is a name of METHODS, optionally with weight variants after '@': `cgns@w3=0.5` is CM-CGNS with loss 3
(the local text loss, where CGNS acts) weighted 0.5, `cgns-no-cgns@w3=0.5` the same weight with plain sentence
InfoNCE in loss 3, so that the pair answers whether CGNS pays at that weight. Several variants are separated by
commas: `cgns@w3=0.5,wg=0`. A variant is allowed only on the methods that have the loss it weights.

`cgns` passes no --method: CM-CGNS is train_pretrain.py's default objective, so its rows run with or without the
--method flag. The peers (convirt, gloria, mgca) need `train_pretrain.py --method`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    flags: tuple[str, ...]            # train_pretrain.py flags that select it
    about: str
    variants: tuple[str, ...] = ()    # the WEIGHTS keys it accepts


# The weights a variant may set: key -> (train_pretrain.py flag, what it weights).
WEIGHTS = {
    "w2": ("--local-image-weight", "loss 2, local image SimSiam"),
    "w3": ("--local-text-weight", "loss 3, local text with CGNS + false negatives"),
    "wg": ("--grounding-weight", "the added sentence-region grounding term"),
}

_CGNS_VARIANTS = ("w2", "w3", "wg")

METHODS = {
    "cgns": Method((), "CM-CGNS, the full method (train_pretrain.py's default objective)", _CGNS_VARIANTS),
    "convirt": Method(("--method", "convirt"), "ConVIRT: bidirectional InfoNCE"),
    "gloria": Method(("--method", "gloria"), "GLoRIA: global + word-region local loss"),
    "mgca": Method(("--method", "mgca"), "MGCA: instance, token-wise and prototype alignment"),
    "cgns-no-cgns": Method(("--no-cgns",), "CM-CGNS with plain sentence InfoNCE in loss 3 (no clustering-guided "
                                           "negatives)", _CGNS_VARIANTS),
    "cgns-no-mir": Method(("--no-mir",), "CM-CGNS without CM-MIR reconstruction in stage 2", _CGNS_VARIANTS),
    "cgns-no-local": Method(("--no-local",), "CM-CGNS without losses 2-3 (global loss and grounding term only)",
                            ("wg",)),
}

RANDOM_INIT = "random-init"           # the baseline row: a method's encoder at random initialisation


@dataclass(frozen=True)
class MethodSpec:
    """A requested method: its base in METHODS and its weight variants {key: value}."""
    name: str                         # canonical: 'cgns@w3=0.5'
    base: str
    weights: tuple[tuple[str, float], ...] = ()

    @property
    def flags(self) -> list[str]:
        """train_pretrain.py flags of this method."""
        flags = list(METHODS[self.base].flags)
        for key, value in self.weights:
            flags += [WEIGHTS[key][0], f"{value:g}"]
        return flags

    @property
    def slug(self) -> str:
        """Its folder name: 'cgns@w3=0.5' -> 'cgns_w3_0.5'."""
        return slug(self.name)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def known_methods() -> str:
    return (", ".join(METHODS) + "; weight variants NAME@KEY=VALUE[,KEY=VALUE] with KEY in "
            + ", ".join(f"{k} ({flag}: {what})" for k, (flag, what) in WEIGHTS.items()))


def parse_method(text: str) -> MethodSpec:
    """'cgns-no-cgns@w3=0.5' -> MethodSpec; an unknown name or variant is a ValueError naming it and the known ones."""
    base, at, rest = text.partition("@")
    if base not in METHODS:
        raise ValueError(f"unknown method {text!r}: known methods are {known_methods()}")
    weights = {}
    for part in filter(None, rest.split(",")):
        key, equals, value = part.partition("=")
        if not equals or key not in WEIGHTS:
            raise ValueError(f"method {text!r}: {part!r} is not KEY=VALUE with KEY in {', '.join(WEIGHTS)}")
        if key not in METHODS[base].variants:
            allowed = ", ".join(METHODS[base].variants) or "none"
            raise ValueError(f"method {text!r}: {base} has no {WEIGHTS[key][1]} to weight ({key}); its variants: "
                             f"{allowed}")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"method {text!r}: {key}={value!r} is not a number") from None
        if not weight >= 0:
            raise ValueError(f"method {text!r}: {key} must be >= 0, got {value}")
        weights[key] = weight
    if at and not weights:
        raise ValueError(f"method {text!r}: nothing after '@' (expected KEY=VALUE)")
    ordered = tuple(sorted(weights.items()))
    name = base + ("@" + ",".join(f"{k}={v:g}" for k, v in ordered) if ordered else "")
    return MethodSpec(name, base, ordered)


def parse_methods(names) -> list[MethodSpec]:
    """Each name parsed; a repeated method (or two whose folders would coincide) is refused."""
    specs = [parse_method(n) for n in names]
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.slug in seen:
            raise ValueError(f"methods {seen[spec.slug]!r} and {spec.name!r} are the same run (folder {spec.slug})")
        seen[spec.slug] = spec.name
    return specs
