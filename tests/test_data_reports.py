"""Report section parsing and sentence splitting: hand-written MIMIC-style cases and the real IU reports."""
import csv
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cgns.data.reports import canonical_section, parse_sections, report_sentences, split_sentences

REAL_IU = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "iu_xray_reports"

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_standard_report_is_impression_then_findings():
    assert report_sentences(MIMIC_REPORT) == [
        "no acute cardiopulmonary process",
        "there is no focal consolidation pleural effusion or pneumothorax",
        "bilateral nodular opacities that most likely represent nipple shadows",
    ]


@pytest.mark.parametrize("header,expected", [
    ("IMPRESSION", "impression"), ("IMPRESION", "impression"), ("IMPRESSIONS", "impression"),
    ("IMPRRESSION", "impression"), ("CONCLUSION", "impression"), ("FINDINGS", "findings"), ("FINDING", "findings"),
    ("FINIDNGS", "findings"), ("FINDNGS", "findings"), ("FINDINGS/IMPRESSION", "findings"),
    ("FINDINGS AND IMPRESSION", "findings"), ("INDICATION", "indication"), ("COMPARISON", "comparison"),
    ("WET READ", "wet read"),
])
def test_header_variants_and_misspellings(header, expected):
    assert canonical_section(header) == expected


def test_misspelt_and_bare_headers_and_inline_text():
    text = ("EXAMINATION: CHEST\n\nFINIDNGS: Heart size is normal. Lungs are clear.\n\nIMPRESSION\n\n"
            "No acute process.\n")
    sections = parse_sections(text)
    assert sections["findings"] == "Heart size is normal. Lungs are clear."
    assert sections["impression"] == "No acute process."
    assert report_sentences(text) == ["no acute process", "heart size is normal", "lungs are clear"]


def test_no_sections_falls_back_to_last_paragraph():
    text = "FINAL REPORT\nINDICATION: cough\n\nCOMPARISON: none\n\nThe lungs are clear.\nNo effusion is seen.\n"
    assert report_sentences(text) == ["the lungs are clear", "no effusion is seen"]
    # A trailing labelled section is not the reading: the fallback walks back past it.
    text = "INDICATION: cough\n\nThe lungs are clear.\n\nCOMPARISON: Chest radiograph from ___\n"
    assert report_sentences(text) == ["the lungs are clear"]
    assert report_sentences("INDICATION: shortness of breath today\n\nCOMPARISON: prior chest film\n") == []


def test_enumerations_short_sentences_and_too_short_reports():
    text = "IMPRESSION: 1. Small left effusion. 2. Mild edema.3.No pneumothorax. Stable.\n"
    assert report_sentences(text) == ["small left effusion", "mild edema", "no pneumothorax"]
    assert report_sentences("FINDINGS: Normal.\nIMPRESSION: No change.\n") == []  # 2 tokens < 3
    assert split_sentences("Unchanged. The heart, mediastinum: ok; no  pneumothorax!") == [
        "the heart mediastinum ok no pneumothorax"]


def test_prose_in_capitals_or_lower_case_is_not_a_header():
    text = "FINDINGS:\nSmall effusion.\nNO PNEUMOTHORAX\nfindings reviewed with the team.\n"
    # Neither the capitalised finding nor the lower-case "findings" line starts a section.
    assert report_sentences(text) == ["small effusion", "no pneumothorax findings reviewed with the team"]


def _iu_reports(limit=None):
    """(xml text sections, flat-csv row) pairs of the real Indiana University reports."""
    with open(REAL_IU / "iu_reports_flat.csv", newline="", encoding="utf-8") as f:
        rows = {row["report_file"]: row for row in csv.DictReader(f)}
    out = []
    with tarfile.open(REAL_IU / "NLMCXR_reports.tgz") as tar:
        for member in tar:
            if not member.name.endswith(".xml"):
                continue
            root = ET.fromstring(tar.extractfile(member).read())
            sections = {el.get("Label"): (el.text or "") for el in root.iter("AbstractText")}
            out.append((sections, rows[Path(member.name).name]))
            if limit and len(out) >= limit:
                break
    return out


@pytest.mark.skipif(not REAL_IU.is_dir(), reason="real IU reports not present")
def test_real_iu_reports_parse_like_their_sections():
    """Rebuild each real report as MIMIC-style text with upper-case headers; the parser must recover exactly
    IMPRESSION + FINDINGS, sentence by sentence, on real radiology language."""
    checked = kept = 0
    for sections, row in _iu_reports():
        text = "".join(f" {label.upper()}:\n {body}\n\n" for label, body in sections.items() if body)
        expected = split_sentences(row["impression"]) + split_sentences(row["findings"])
        if sum(len(s.split()) for s in expected) < 3:
            expected = []
        got = report_sentences(text)
        assert got == expected, (row["report_file"], text)
        for sentence in got:
            assert re.fullmatch(r"[a-z0-9_]+( [a-z0-9_]+)+", sentence), sentence
        checked += 1
        kept += bool(got)
    assert checked == 3955
    assert kept > 3800  # nearly every real report keeps text
