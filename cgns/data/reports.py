"""Radiology report text: section parsing, sentence splitting and the keep/drop rule of METHOD.md.

A free-text report (MIMIC-CXR style) is a sequence of upper-case section headers followed by a colon
("FINDINGS:", "IMPRESSION:", ...). Headers vary and are sometimes misspelt, so a header is matched to its canonical
section by a small synonym table and then by edit similarity. Reports with neither FINDINGS nor IMPRESSION fall back
to their last paragraph. The text used for pretraining is IMPRESSION then FINDINGS.
"""
from __future__ import annotations

import difflib
import re

# Canonical section -> spelled variants seen in radiology reports. Anything else that looks like a header is kept
# under its own normalised name (so "COMPARISON" text never leaks into the findings).
SECTION_SYNONYMS = {
    "findings": ("findings", "finding", "findings and impression", "findings impression", "report", "body"),
    "impression": ("impression", "impressions", "conclusion", "conclusions", "summary", "opinion",
                   "interpretation", "impression and recommendation", "impression and recommendations",
                   "impression and plan", "final impression", "clinical impression", "result", "results"),
}
_CANONICAL_WORDS = ("findings", "impression")
# Headers that resemble the canonical ones by spelling but are different sections.
_NOT_FUZZY = {"indication", "indications", "final report", "addendum", "technique", "comparison", "history",
              "examination", "exam", "notification", "recommendation", "recommendations", "procedure", "reason"}

# A header: words (letters, spaces, a few separators) then a colon at the start of a line, or a line holding only a
# header. Upper case marks an arbitrary header; any case is accepted for the two sections we keep ('Findings:').
_HEADER_WITH_COLON = re.compile(r"^[ \t]*([A-Za-z][A-Za-z &/()\-]{1,48}?)[ \t]*:[ \t]*(.*)$")
_HEADER_ALONE = re.compile(r"^[ \t]*([A-Za-z][A-Za-z &/()\-]{2,48}?)[ \t]*$")
_ENUMERATION = re.compile(r"[0-9]+\.")
_WORD = re.compile(r"\w+")


def normalise_header(header: str) -> str:
    """'  FINDINGS / IMPRESSION ' -> 'findings impression' (lower case, letters and single spaces)."""
    return " ".join(re.sub(r"[^a-z]+", " ", header.lower()).split())


def canonical_section(header: str) -> str:
    """Map a header to 'findings', 'impression' or its own normalised name; tolerant to misspellings.

    Example: 'IMPRESION' -> 'impression', 'FINIDNGS' -> 'findings', 'COMPARISON' -> 'comparison'.
    """
    name = normalise_header(header)
    for canonical, variants in SECTION_SYNONYMS.items():
        if name in variants:
            return canonical
    if name in _NOT_FUZZY:
        return name
    # Misspellings: one or two letters off a canonical word (ratio >= 0.8 is ~2 edits on 'impression').
    for canonical in _CANONICAL_WORDS:
        words = name.split()
        if words and difflib.SequenceMatcher(None, words[0], canonical).ratio() >= 0.8:
            return canonical
    return name


def parse_sections(text: str) -> dict[str, str]:
    """Split a report into {canonical section name: text}; text before the first header is 'preamble'.

    Repeated sections (e.g. two IMPRESSION headers) are concatenated in order of appearance.
    """
    sections: dict[str, list[str]] = {}
    current = "preamble"
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        header, rest = _match_header(line)
        if header is not None:
            current = header
            sections.setdefault(current, [])
            if rest:
                sections[current].append(rest)
            continue
        sections.setdefault(current, []).append(line.strip())
    return {name: _join_lines(lines) for name, lines in sections.items()}


def _match_header(line: str) -> tuple[str | None, str]:
    """(canonical header, text after the colon) when `line` starts a section, else (None, '').

    Upper-case headers may be anything and may be misspelt; lower/mixed case ('Findings:') must name a known
    variant exactly, so report prose never reads as a header.
    """
    match = _HEADER_WITH_COLON.match(line) or _HEADER_ALONE.match(line)
    if match is None:
        return None, ""
    raw = match.group(1)
    rest = match.group(2).strip() if match.re is _HEADER_WITH_COLON else ""
    if not raw.isupper():
        name = normalise_header(raw)
        known = any(name in variants for variants in SECTION_SYNONYMS.values())
        return (canonical_section(raw), rest) if known else (None, "")
    name = canonical_section(raw)
    if match.re is _HEADER_ALONE and name not in _CANONICAL_WORDS and name not in _NOT_FUZZY:
        # A bare upper-case line is a header only when it names a known section; an upper-case finding stays text.
        return None, ""
    return name, rest


def _join_lines(lines: list[str]) -> str:
    """Join wrapped lines with spaces, keeping blank lines as paragraph breaks."""
    paragraphs, current = [], []
    for line in lines:
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def last_paragraph(text: str) -> str:
    """The last blank-line separated paragraph that is not a labelled non-findings section (a paragraph opening
    with 'COMPARISON:', 'INDICATION:', 'FINAL REPORT', ... is skipped); '' when there is none."""
    paragraphs = [p.strip() for p in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")) if p.strip()]
    for paragraph in reversed(paragraphs):
        header, _ = _match_header(paragraph.split("\n", 1)[0])
        if header is None:
            return " ".join(paragraph.split())
    return ""


def report_parts(text: str) -> list[str]:
    """[IMPRESSION, FINDINGS] of a report (those present); [last paragraph] when it has neither (METHOD.md)."""
    sections = parse_sections(text)
    parts = [sections.get("impression", "").strip(), sections.get("findings", "").strip()]
    parts = [p for p in parts if p]
    if parts:
        return parts
    fallback = last_paragraph(text)
    return [fallback] if fallback else []


def report_text(text: str) -> str:
    """IMPRESSION then FINDINGS as one string (the last paragraph when the report has neither)."""
    return "\n\n".join(report_parts(text))


def split_sentences(text: str) -> list[str]:
    """Sentences as lower-case word tokens joined by single spaces; sentences of <= 1 token are dropped.

    Splits on enumerations ('1.', '2.') and on '.'; tokens are runs of word characters, non-ASCII removed.
    Example: '1. No effusion. 2. Heart size normal.' -> ['no effusion', 'heart size normal'].
    """
    text = text.replace("\n", " ")
    sentences = []
    for point in _ENUMERATION.split(text):
        for piece in point.split("."):
            tokens = [t.encode("ascii", "ignore").decode("ascii") for t in _WORD.findall(piece.lower())]
            tokens = [t for t in tokens if t]
            if len(tokens) > 1:
                sentences.append(" ".join(tokens))
    return sentences


def report_sentences(text: str, min_tokens: int = 3) -> list[str]:
    """Parse a whole report into its kept sentences; [] when it has fewer than `min_tokens` tokens (study dropped)."""
    # Each part is split on its own so an impression without a final '.' does not run into the findings.
    sentences = [s for part in report_parts(text) for s in split_sentences(part)]
    if sum(len(s.split()) for s in sentences) < min_tokens:
        return []
    return sentences
