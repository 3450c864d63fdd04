"""What a generated patient has: anatomy parameters and findings (with side, zone, severity, certainty).

A case is drawn once from a seeded numpy Generator and then rendered (render.py), described in a report
(reports.py) and written into a data set's layout (writers.py); the three read the same case,
which is what makes the ground truth exact.

Sides are the PATIENT's: 'right' is drawn on the image's left half (radiological convention).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# The 14 CheXpert observations, in the column order of CheXpert's train.csv.
CHEXPERT_LABELS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                   "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                   "Pleural Other", "Fracture", "Support Devices")
COMPETITION_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")

# Finding kinds the renderer can draw.
KINDS = ("cardiomegaly", "effusion", "consolidation", "atelectasis", "edema", "pneumothorax", "nodule", "covid",
         "device", "foreign_object")

# Which CheXpert columns a finding makes present (its truth, independent of how the report words it).
KIND_LABELS = {
    "cardiomegaly": ("Cardiomegaly",),
    "effusion": ("Pleural Effusion",),
    "consolidation": ("Consolidation", "Lung Opacity"),
    "atelectasis": ("Atelectasis",),
    "edema": ("Edema",),
    "pneumothorax": ("Pneumothorax",),
    "nodule": ("Lung Lesion",),
    "covid": ("Lung Opacity",),
    "device": ("Support Devices",),
    "foreign_object": (),
}

LOBES = (("right", "upper"), ("right", "middle"), ("right", "lower"), ("left", "upper"), ("left", "lower"))


@dataclass
class Finding:
    """One drawn abnormality. side in {'left','right','bilateral',None}; zone in {'upper','middle','lower',None};
    severity in (0, 1]; certain=False means the report hedges (CheXpert -1) and the drawing is faint."""
    kind: str
    side: str | None = None
    zone: str | None = None
    severity: float = 0.5
    certain: bool = True
    extra: dict = field(default_factory=dict)


@dataclass
class Anatomy:
    """Per-patient geometry and acquisition, in normalised units (1.0 = the shorter image side)."""
    shift_x: float
    shift_y: float
    scale: float
    tilt: float
    lung_w: float
    lung_h: float
    lung_gap: float
    dome_right: float   # height of the right hemidiaphragm dome (the left one sits 0.025 lower)
    ctr: float          # cardiothoracic ratio (cardiomegaly overrides it)
    rib_spacing: float
    rib_phase: float
    brightness: float
    contrast: float
    gamma: float
    noise: float
    sex: str
    age: int


@dataclass
class Case:
    anatomy: Anatomy
    findings: list[Finding]
    view: str = "PA"

    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}

    def present(self) -> dict[str, int]:
        """CheXpert column -> 1 when drawn (hedged findings are drawn faintly and count as present)."""
        out = {name: 0 for name in CHEXPERT_LABELS}
        for f in self.findings:
            for name in KIND_LABELS[f.kind]:
                out[name] = 1
        pathologies = [n for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices")]
        out["No Finding"] = int(not any(out[n] for n in pathologies))
        return out


def sample_anatomy(rng: np.random.Generator, view: str = "PA") -> Anatomy:
    """A patient's geometry and acquisition. AP (portable, supine) films magnify the heart a little, catch a
    shallower inspiration and are noisier than PA films."""
    sex = "Female" if rng.random() < 0.5 else "Male"
    ap = view == "AP"
    return Anatomy(
        shift_x=rng.uniform(-0.03, 0.03), shift_y=rng.uniform(-0.03, 0.03), scale=rng.uniform(0.9, 1.06),
        tilt=rng.uniform(-0.05, 0.05), lung_w=rng.uniform(0.135, 0.16) * (0.95 if sex == "Female" else 1.0),
        lung_h=rng.uniform(0.27, 0.31) * (0.95 if ap else 1.0), lung_gap=rng.uniform(0.17, 0.2),
        dome_right=rng.uniform(0.17, 0.2), ctr=rng.uniform(0.40, 0.47) + (0.02 if ap else 0.0),
        rib_spacing=rng.uniform(0.05, 0.058), rib_phase=rng.uniform(0, 0.02),
        brightness=rng.uniform(-0.05, 0.05), contrast=rng.uniform(0.9, 1.15), gamma=rng.uniform(0.85, 1.15),
        noise=rng.uniform(0.012, 0.03) * (1.3 if ap else 1.0), sex=sex, age=int(rng.integers(18, 91)),
    )


def _side(rng: np.random.Generator) -> str:
    return "left" if rng.random() < 0.5 else "right"


def _certain(rng: np.random.Generator, p_uncertain: float) -> bool:
    return bool(rng.random() >= p_uncertain)


def _severity(rng: np.random.Generator, certain: bool) -> float:
    # Hedged findings are drawn faint, confident ones from mild to severe.
    return float(rng.uniform(0.15, 0.35) if not certain else rng.uniform(0.45, 1.0))


def sample_general(rng: np.random.Generator, p_uncertain: float = 0.15) -> list[Finding]:
    """Findings of a general chest X-ray population (MIMIC-CXR / CheXpert style)."""
    findings: list[Finding] = []
    if rng.random() < 0.22:
        c = _certain(rng, p_uncertain)
        findings.append(Finding("cardiomegaly", severity=_severity(rng, c), certain=c))
    if rng.random() < 0.25:
        c = _certain(rng, p_uncertain)
        side = "bilateral" if rng.random() < 0.25 else _side(rng)
        findings.append(Finding("effusion", side=side, zone="lower", severity=_severity(rng, c), certain=c))
    if rng.random() < 0.2:
        c = _certain(rng, p_uncertain)
        side, zone = LOBES[rng.integers(len(LOBES))]
        findings.append(Finding("consolidation", side=side, zone=zone, severity=_severity(rng, c), certain=c,
                                extra={"pneumonia": int(rng.integers(3))}))
    if rng.random() < 0.2:
        c = _certain(rng, p_uncertain)
        findings.append(Finding("atelectasis", side=_side(rng), zone="lower", severity=_severity(rng, c), certain=c))
    if rng.random() < 0.18:
        c = _certain(rng, p_uncertain)
        findings.append(Finding("edema", side="bilateral", severity=_severity(rng, c), certain=c))
    if rng.random() < 0.08:
        findings.append(Finding("pneumothorax", side=_side(rng), zone="upper", severity=float(rng.uniform(0.3, 1))))
    if rng.random() < 0.1:
        side, zone = LOBES[rng.integers(len(LOBES))]
        findings.append(Finding("nodule", side=side, zone=zone, severity=float(rng.uniform(0.4, 1))))
    if rng.random() < 0.06:
        findings.append(Finding("covid", side="bilateral", zone="lower", severity=float(rng.uniform(0.5, 1))))
    if rng.random() < 0.15:
        findings.append(Finding("device", extra={"device": ("ett", "line", "pacemaker")[rng.integers(3)]}))
    return findings


def sample_case(rng: np.random.Generator, profile: str, view: str = "PA", **kw) -> Case:
    """A case of one population profile:
    'general' (MIMIC-CXR, CheXpert), 'rsna' (kw target), 'covidx' (kw label), 'siim' (kw positive, parts),
    'object' (kw n_objects)."""
    anatomy = sample_anatomy(rng, view)
    if profile == "general":
        findings = sample_general(rng)
    elif profile == "rsna":
        findings = []
        if kw["target"]:
            for _ in range(kw.get("n_boxes", 1)):
                side, zone = LOBES[rng.integers(len(LOBES))]
                if any(f.side == side for f in findings):
                    side = "left" if side == "right" else "right"
                findings.append(Finding("consolidation", side=side, zone=zone, severity=float(rng.uniform(0.5, 1)),
                                        extra={"pneumonia": 1}))
        elif rng.random() < 0.5:
            # "No Lung Opacity / Not Normal": other disease, but no pneumonia box.
            findings = [f for f in sample_general(rng, 0.0) if f.kind in ("cardiomegaly", "effusion", "nodule",
                                                                           "device")]
    elif profile == "covidx":
        label = kw["label"]
        findings = []
        if label == "pneumonia":
            side, zone = LOBES[rng.integers(len(LOBES))]
            findings.append(Finding("consolidation", side=side, zone=zone, severity=float(rng.uniform(0.55, 1)),
                                    extra={"pneumonia": 1}))
        elif label == "COVID-19":
            findings.append(Finding("covid", side="bilateral", zone="lower", severity=float(rng.uniform(0.5, 1))))
    elif profile == "siim":
        findings = []
        if kw["positive"]:
            findings.append(Finding("pneumothorax", side=_side(rng), zone="upper", severity=float(rng.uniform(0.25, 1)),
                                    extra={"parts": kw.get("parts", 1)}))
            if rng.random() < 0.3:
                findings.append(Finding("device", extra={"device": "chest_tube", "side": findings[0].side}))
    elif profile == "object":
        findings = [Finding("foreign_object", extra={"shape": int(rng.integers(3))})
                    for _ in range(kw.get("n_objects", 0))]
    else:
        raise ValueError(f"unknown case profile {profile!r}")
    return Case(anatomy=anatomy, findings=findings, view=view)
