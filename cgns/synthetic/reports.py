"""MIMIC-style free-text reports for a generated case, with the labels a CheXpert-style labeller would give.

Each sentence comes from a phrase bank (several phrasings per finding, location words that match the drawing,
negations of absent findings, hedged mentions -> uncertain) and carries its label effects and the index of the
finding it describes. The layout varies as real reports do: missing sections, misspelt or merged headers,
IMPRESSION-only reports, numbered lists, and reports with neither FINDINGS nor IMPRESSION (last paragraph).

Sentences of FINDINGS / IMPRESSION contain only letters, spaces, commas, hyphens and the final period, so the
expected parse (lower-cased word tokens joined by single spaces) is the same whether tokens are [a-z]+ or \\w+.
"""
from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field

import numpy as np

from cgns.synthetic.cases import CHEXPERT_LABELS, Case, Finding


@dataclass
class Sentence:
    text: str
    effects: dict[str, int]          # CheXpert column -> 1 / 0 / -1
    finding: int | None = None       # index into case.findings of the finding it mentions (None: negation/normal)
    kind: str | None = None          # the finding kind it is about, also for negations; None: a normal statement
    negated: bool = False            # True: says that finding `kind` is absent


@dataclass
class Report:
    text: str
    labels: dict[str, float | None]               # CheXpert column -> 1.0 / 0.0 / -1.0 / None (blank)
    sections: dict[str, list[Sentence]] = field(default_factory=dict)  # 'impression', 'findings' as parsed
    layout: str = "standard"


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _size(sev: float, words=("small", "moderate", "large")) -> str:
    return words[0] if sev < 0.6 else words[1] if sev < 0.8 else words[2]


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _lobe(f: Finding) -> str:
    if f.side == "left" and f.zone == "middle":
        return "lingula"
    return f"{f.side} {f.zone} lobe"


def positive_sentence(f: Finding, index: int, rng: np.random.Generator) -> Sentence:
    """One findings-section sentence describing finding `f` (hedged when not f.certain)."""
    k, sev, side = f.kind, f.severity, f.side
    mild = _size(sev, ("mild", "moderate", "severe"))
    if k == "cardiomegaly":
        if not f.certain:
            text = _pick(rng, ["the heart size is borderline enlarged, possibly mild cardiomegaly",
                               "possible mild cardiomegaly", "cardiomegaly cannot be excluded"])
            eff = {"Cardiomegaly": -1}
        else:
            text = _pick(rng, [f"the heart is {mild}ly enlarged", f"{mild} cardiomegaly is present",
                               f"there is {mild} enlargement of the cardiac silhouette",
                               f"{mild} cardiomegaly is again noted"])
            eff = {"Cardiomegaly": 1}
            if sev > 0.8:
                text = _pick(rng, [text, "the cardiomediastinal silhouette is enlarged, with severe cardiomegaly"])
                eff["Enlarged Cardiomediastinum"] = 1
    elif k == "effusion":
        size = _size(sev)
        if side == "bilateral":
            text = ("possible small bilateral pleural effusions" if not f.certain else
                    _pick(rng, [f"{size} bilateral pleural effusions", f"there are {size} bilateral pleural effusions",
                                f"bilateral pleural effusions, {size} in size"]))
        elif not f.certain:
            text = _pick(rng, [f"possible small {side} pleural effusion",
                               f"blunting of the {side} costophrenic angle may reflect a trace effusion",
                               f"a small {side} pleural effusion cannot be excluded"])
        else:
            text = _pick(rng, [f"there is a {size} {side} pleural effusion", f"{size} {side}-sided pleural effusion",
                               f"{size} {side} pleural effusion with adjacent basilar opacity",
                               f"a {size} {side} pleural effusion is again seen"])
        eff = {"Pleural Effusion": 1 if f.certain else -1}
    elif k == "consolidation":
        lobe = _lobe(f)
        if not f.certain:
            text = _pick(rng, [f"possible early consolidation in the {lobe}",
                               f"subtle opacity in the {lobe} may represent early pneumonia"])
            eff = {"Consolidation": -1, "Lung Opacity": 1} if "consolidation" in text else \
                {"Lung Opacity": 1, "Pneumonia": -1}
        else:
            style = f.extra.get("pneumonia", 0)
            if style == 1:
                text = _pick(rng, [f"{lobe} consolidation consistent with pneumonia",
                                   f"there is dense consolidation in the {lobe}, compatible with pneumonia"])
                eff = {"Consolidation": 1, "Lung Opacity": 1, "Pneumonia": 1}
            elif style == 2:
                text = _pick(rng, [f"focal consolidation in the {lobe}, concerning for pneumonia",
                                   f"airspace consolidation in the {lobe}, which may reflect pneumonia"])
                eff = {"Consolidation": 1, "Lung Opacity": 1, "Pneumonia": -1}
            else:
                text = _pick(rng, [f"focal consolidation is seen in the {lobe}",
                                   f"there is airspace consolidation in the {lobe}",
                                   f"new {lobe} consolidation"])
                eff = {"Consolidation": 1, "Lung Opacity": 1}
    elif k == "atelectasis":
        if not f.certain:
            text = _pick(rng, [f"subtle {side} basilar opacity may reflect atelectasis",
                               f"possible minimal {side} basilar atelectasis"])
            eff = {"Atelectasis": -1}
        else:
            text = _pick(rng, [f"plate-like atelectasis at the {side} lung base", f"{side} basilar atelectasis",
                               f"linear atelectasis in the {side} lower lobe",
                               f"there is {mild} {side} lower lobe atelectasis"])
            eff = {"Atelectasis": 1}
    elif k == "edema":
        if not f.certain:
            text = _pick(rng, ["possible mild interstitial edema",
                               "mild pulmonary vascular congestion, cannot exclude mild edema"])
            eff = {"Edema": -1}
        else:
            text = _pick(rng, [f"{mild} pulmonary edema", f"there is {mild} interstitial pulmonary edema",
                               f"perihilar haziness and vascular congestion consistent with {mild} pulmonary edema"])
            eff = {"Edema": 1}
    elif k == "pneumothorax":
        size = _size(sev)
        text = _pick(rng, [f"there is a {size} {side} apical pneumothorax", f"{size} {side} pneumothorax",
                           f"a {size} {side}-sided pneumothorax is present, most apparent at the apex"])
        eff = {"Pneumothorax": 1}
    elif k == "nodule":
        where = f"{f.side} {'mid' if f.zone == 'middle' else f.zone} lung"
        text = _pick(rng, [f"a small nodule projects over the {where}", f"{where} nodule",
                           f"there is a rounded nodular opacity in the {where}"])
        eff = {"Lung Lesion": 1}
    elif k == "covid":
        text = _pick(rng, ["bilateral peripheral patchy opacities in the lower lungs, concerning for multifocal "
                           "pneumonia", "multifocal bilateral ground-glass opacities, predominantly peripheral and "
                           "basilar, which may reflect atypical infection"])
        eff = {"Lung Opacity": 1, "Pneumonia": -1}
    elif k == "device":
        dev = f.extra["device"]
        text = {"ett": "an endotracheal tube terminates in standard position above the carina",
                "line": "a right internal jugular central venous catheter terminates in the superior vena cava",
                "pacemaker": "left chest wall pacemaker with a lead in the right ventricle",
                "chest_tube": f"a {f.extra.get('side', 'right')}-sided chest tube is in place"}[dev]
        eff = {"Support Devices": 1}
    elif k == "foreign_object":
        text = "a radiopaque foreign object projects over the chest"
        eff = {}
    else:
        raise ValueError(f"no phrase bank for finding kind {k!r}")
    return Sentence(_cap(text) + ".", eff, finding=index, kind=k)


def impression_sentence(f: Finding, index: int, rng: np.random.Generator) -> Sentence:
    """A short impression phrase (reuses the findings phrasing but shortened)."""
    s = positive_sentence(f, index, rng)
    if f.certain and f.kind in ("cardiomegaly", "edema", "pneumothorax", "effusion") and rng.random() < 0.5:
        short = {"cardiomegaly": f"{_size(f.severity, ('mild', 'moderate', 'severe'))} cardiomegaly",
                 "edema": "pulmonary edema",
                 "pneumothorax": f"{f.side} pneumothorax",
                 "effusion": f"{f.side} pleural effusion" if f.side != "bilateral" else "bilateral effusions"}
        s = Sentence(_cap(short[f.kind]) + ".", s.effects, finding=index, kind=f.kind)
    return s


# Negations: (text, effects, kind) of absent findings, chosen when the matching kind is absent.
NEGATIONS = [
    (["no pleural effusion", "there is no pleural effusion", "no effusion is seen"],
     {"Pleural Effusion": 0}, "effusion"),
    (["no pneumothorax", "there is no pneumothorax", "no pneumothorax is seen"], {"Pneumothorax": 0}, "pneumothorax"),
    (["no focal consolidation", "there is no focal consolidation to suggest pneumonia"],
     {"Consolidation": 0, "Pneumonia": 0}, "consolidation"),
    (["no pulmonary edema", "there is no pulmonary vascular congestion or edema"], {"Edema": 0}, "edema"),
    (["the heart size is normal", "heart size is within normal limits", "the cardiac silhouette is not enlarged"],
     {"Cardiomegaly": 0}, "cardiomegaly"),
    (["the cardiomediastinal silhouette is normal", "normal mediastinal and hilar contours"],
     {"Enlarged Cardiomediastinum": 0}, "cardiomegaly"),
    (["the lungs are clear", "the lungs are well expanded and clear"],
     {"Lung Opacity": 0, "Consolidation": 0, "Atelectasis": 0}, "clear"),
    (["no acute osseous abnormality", "the osseous structures are unremarkable"], {"Fracture": 0}, "bones"),
]

CLEAR_BLOCKERS = {"consolidation", "atelectasis", "covid", "edema", "nodule", "effusion"}


def _findings_sentences(case: Case, rng: np.random.Generator) -> list[Sentence]:
    order = ("device", "cardiomegaly", "edema", "consolidation", "covid", "atelectasis", "nodule", "effusion",
             "pneumothorax", "foreign_object")
    out = [positive_sentence(f, i, rng) for i, f in sorted(enumerate(case.findings),
                                                            key=lambda p: order.index(p[1].kind))]
    kinds = case.kinds()
    for options, effects, kind in NEGATIONS:
        absent = (not (kinds & CLEAR_BLOCKERS)) if kind == "clear" else kind not in kinds
        if kind == "bones":
            absent = True
        if absent and rng.random() < 0.6:
            # statements of normality ('the lungs are clear') name no finding: kind None
            about = None if kind in ("clear", "bones") else kind
            out.append(Sentence(_cap(_pick(rng, options)) + ".", dict(effects), kind=about, negated=about is not None))
    return out


def _impression_sentences(case: Case, rng: np.random.Generator) -> list[Sentence]:
    major = [(i, f) for i, f in enumerate(case.findings) if f.kind not in ("device", "foreign_object")]
    if not major:
        text = _pick(rng, ["no acute cardiopulmonary process", "no acute intrathoracic abnormality",
                           "no acute cardiopulmonary abnormality"])
        return [Sentence(_cap(text) + ".", {}, kind=None)]
    return [impression_sentence(f, i, rng) for i, f in major]


def _labels(sentences: list[Sentence]) -> dict[str, float | None]:
    """Aggregate like the CheXpert labeller: positive > uncertain > negative > not mentioned."""
    rank = {1: 3, -1: 2, 0: 1}
    labels: dict[str, int | None] = {name: None for name in CHEXPERT_LABELS}
    for s in sentences:
        for name, value in s.effects.items():
            if labels[name] is None or rank[value] > rank[labels[name]]:
                labels[name] = value
    pathologies = [n for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices")]
    if not any(labels[n] in (1, -1) for n in pathologies):
        labels["No Finding"] = 1
    return {name: (None if v is None else float(v)) for name, v in labels.items()}


def _wrap(text: str) -> str:
    return "\n".join(" " + line for line in textwrap.wrap(text, 76, break_on_hyphens=False))


INDICATIONS = ["___ year old {sex} with shortness of breath", "History: ___{s} with cough and fever",
               "___ with chest pain, evaluate for acute process", "___ year old {sex} status post line placement",
               "Dyspnea, evaluate for pneumonia", "___{s} with hypoxia"]
EXAMS = {"PA": ["CHEST (PA AND LAT)", "CHEST PA AND LATERAL", "Chest radiograph, PA and lateral"],
         "AP": ["CHEST (PORTABLE AP)", "Portable chest radiograph", "CHEST PORT. LINE PLACEMENT"]}


def write_report(case: Case, rng: np.random.Generator) -> Report:
    """The report text of `case`, its labels and its expected parsed sections."""
    findings = _findings_sentences(case, rng)
    impression = _impression_sentences(case, rng)
    labels = _labels(findings + impression)
    an = case.anatomy
    sex, s = ("woman", "F") if an.sex == "Female" else ("man", "M")
    head = [" " * 33 + "FINAL REPORT"]
    if rng.random() < 0.95:
        head.append(f" EXAMINATION:  {_pick(rng, EXAMS.get(case.view, EXAMS['PA']))}")
    if rng.random() < 0.9:
        head.append(f" INDICATION:  {_pick(rng, INDICATIONS).format(sex=sex, s=s)}")
    if rng.random() < 0.5:
        head.append(" TECHNIQUE:  Chest PA and lateral" if case.view == "PA" else " TECHNIQUE:  Portable AP chest")
    if rng.random() < 0.85:
        head.append(f" COMPARISON:  {_pick(rng, ['___', 'None.', 'Chest radiograph from ___', '___ and ___'])}")

    def body(sentences: list[Sentence]) -> str:
        return _wrap(" ".join(x.text for x in sentences))

    def numbered(sentences: list[Sentence]) -> str:
        return "\n".join(f" {n}. {x.text}" for n, x in enumerate(sentences, 1))

    roll = rng.random()
    sections: dict[str, list[Sentence]] = {"impression": [], "findings": []}
    blocks = list(head)
    if roll < 0.55:
        layout = "standard"
        imp = numbered(impression) if (len(impression) > 1 and rng.random() < 0.35) else body(impression)
        blocks += [" FINDINGS:\n \n" + body(findings), " IMPRESSION:\n \n" + imp]
        sections = {"impression": impression, "findings": findings}
    elif roll < 0.65:
        layout = "impression_only"
        merged = impression + [x for x in findings if x.negated]
        blocks.append(" IMPRESSION:\n \n" + (numbered(merged) if rng.random() < 0.5 else body(merged)))
        sections["impression"] = merged
    elif roll < 0.75:
        layout = "misspelt_header"
        header = _pick(rng, ["IMPRESION:", "IMPRESSIONS:", "IMPRESSION :"])
        finding_header = _pick(rng, ["FINDINGS:", "FINDING:"])
        blocks += [f" {finding_header}\n \n" + body(findings), f" {header}\n \n" + body(impression)]
        sections = {"impression": impression, "findings": findings}
    elif roll < 0.85:
        layout = "merged_header"
        header = _pick(rng, ["FINDINGS/IMPRESSION:", "FINDINGS AND IMPRESSION:"])
        blocks.append(f" {header}\n \n" + body(findings))
        sections["findings"] = findings
    elif roll < 0.93:
        layout = "no_sections"
        blocks.append(body(findings))
        sections["findings"] = findings
    else:
        layout = "findings_only"
        blocks.append(" FINDINGS:\n \n" + body(findings))
        sections["findings"] = findings
    text = "\n \n".join(blocks) + "\n"
    return Report(text=text, labels=labels, sections=sections, layout=layout)


def expected_sentences(report: Report) -> list[Sentence]:
    """The parse a correct reader gives: impression then findings, sentences of > 1 token."""
    out = []
    for part in ("impression", "findings"):
        for s in report.sections[part]:
            if len(tokens(s.text)) > 1:
                out.append(s)
    return out
