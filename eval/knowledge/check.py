#!/usr/bin/env python3
"""Validate the knowledge-base retrieval evaluation set.

Checks that questions.json is well formed, that every `answer` is a
verbatim substring (occurring exactly once, inside a single paragraph or
list item) of the document it names, that ids are unique, and that the
minimum counts are met. Also reports document word counts and, as a
diagnostic, how many content words each question shares with its answer.

Usage: python3 check.py            (run from any directory)
Exits non-zero if any problem is found.
"""
import json
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
KINDS = ("paraphrase", "lexical")
MIN_TOTAL = 110
MIN_PER_KIND = {"paraphrase": 80, "lexical": 25}
MIN_PER_DOC = 18
ANSWER_WORDS = (8, 25)
DOC_WORDS = (700, 1500)
REQUIRED_KEYS = {"id", "question", "document", "answer", "kind"}

STOPWORDS = set("""
a an the and or but if so of to in on at by for with from as is are was were be been
being am do does did done have has had having i i'm me my we our you your it it's its
they them their he she his her this that these those there here what what's when where
which who whom why how can could would should will shall may might must not no yes any
all some just like um uh about up down out over into than then too very also only get
got gonna still much many one two can't don't isn't i've i'll you'd that's there's
""".split())


def words(text):
    return re.findall(r"[a-z0-9][a-z0-9'\-]*", text.lower())


def stem(w):
    for suf in ("ing", "ed", "es", "s"):
        if len(w) > len(suf) + 3 and w.endswith(suf):
            return w[: -len(suf)]
    return w


def content(text):
    return {stem(w) for w in words(text) if w not in STOPWORDS}


def main():
    problems = []
    qpath = HERE / "questions.json"
    try:
        items = json.loads(qpath.read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001
        print(f"FAIL: cannot load {qpath}: {e}")
        return 1
    if not isinstance(items, list):
        print("FAIL: questions.json must be a JSON array")
        return 1

    docs = {}
    doc_names = sorted(p.name for p in HERE.glob("*.md") if p.name != "README.md")
    for name in doc_names:
        docs[name] = (HERE / name).read_text(encoding="utf-8")

    # Document checks: length and heading structure.
    print("Documents:")
    for name, text in docs.items():
        n = len(text.split())
        h1 = len(re.findall(r"^# \S", text, re.M))
        h2 = len(re.findall(r"^## \S", text, re.M))
        h3 = len(re.findall(r"^### \S", text, re.M))
        print(f"  {name:24s} {n:5d} words  (#:{h1} ##:{h2} ###:{h3})")
        if not DOC_WORDS[0] <= n <= DOC_WORDS[1]:
            problems.append(f"{name}: {n} words, expected {DOC_WORDS[0]}-{DOC_WORDS[1]}")
        if h1 != 1 or not text.startswith("# "):
            problems.append(f"{name}: must start with exactly one '# Title'")
        if h2 < 3:
            problems.append(f"{name}: only {h2} '##' sections")

    ids = Counter()
    questions = Counter()
    per_kind = Counter()
    per_doc = Counter()
    per_doc_kind = Counter()
    overlap = {k: [] for k in KINDS}

    for n, item in enumerate(items):
        where = f"item {n}"
        if not isinstance(item, dict):
            problems.append(f"{where}: not an object")
            continue
        qid = item.get("id", "?")
        where = f"{qid}"
        missing = REQUIRED_KEYS - item.keys()
        extra = item.keys() - REQUIRED_KEYS
        if missing:
            problems.append(f"{where}: missing keys {sorted(missing)}")
            continue
        if extra:
            problems.append(f"{where}: unexpected keys {sorted(extra)}")
        if not all(isinstance(item[k], str) and item[k].strip() for k in REQUIRED_KEYS):
            problems.append(f"{where}: all fields must be non-empty strings")
            continue
        if not re.fullmatch(r"q\d{3,}", qid):
            problems.append(f"{where}: id should look like q001")
        ids[qid] += 1
        questions[item["question"].strip().lower()] += 1

        kind, doc, ans = item["kind"], item["document"], item["answer"]
        if kind not in KINDS:
            problems.append(f"{where}: kind {kind!r} not in {KINDS}")
        if doc not in docs:
            problems.append(f"{where}: unknown document {doc!r}")
            continue
        per_kind[kind] += 1
        per_doc[doc] += 1
        per_doc_kind[(doc, kind)] += 1

        text = docs[doc]
        count = text.count(ans)
        if count == 0:
            problems.append(f"{where}: answer not found verbatim in {doc}: {ans!r}")
        elif count > 1:
            problems.append(f"{where}: answer occurs {count} times in {doc} (ambiguous)")
        if "\n" in ans:
            problems.append(f"{where}: answer spans more than one line/paragraph")
        if ans != ans.strip():
            problems.append(f"{where}: answer has leading/trailing whitespace")
        nw = len(ans.split())
        if not ANSWER_WORDS[0] <= nw <= ANSWER_WORDS[1]:
            problems.append(f"{where}: answer has {nw} words, expected {ANSWER_WORDS[0]}-{ANSWER_WORDS[1]}")

        if kind in overlap:
            shared = content(item["question"]) & content(ans)
            overlap[kind].append(len(shared))

    for qid, c in ids.items():
        if c > 1:
            problems.append(f"duplicate id {qid} ({c} times)")
    for q, c in questions.items():
        if c > 1:
            problems.append(f"duplicate question {q!r} ({c} times)")

    total = sum(per_kind.values())
    if len(items) < MIN_TOTAL:
        problems.append(f"only {len(items)} questions, need {MIN_TOTAL}")
    for k, m in MIN_PER_KIND.items():
        if per_kind[k] < m:
            problems.append(f"only {per_kind[k]} {k} questions, need {m}")
    for d in docs:
        if per_doc[d] < MIN_PER_DOC:
            problems.append(f"only {per_doc[d]} questions for {d}, need {MIN_PER_DOC}")

    print(f"\nQuestions: {len(items)} total")
    for k in KINDS:
        print(f"  {k:11s} {per_kind[k]}")
    print("\nPer document:            total  paraphrase  lexical")
    for d in docs:
        print(f"  {d:24s} {per_doc[d]:5d}  {per_doc_kind[(d, 'paraphrase')]:10d}  "
              f"{per_doc_kind[(d, 'lexical')]:7d}")
    print("\nContent words shared between question and answer (diagnostic):")
    for k in KINDS:
        v = overlap[k]
        if v:
            dist = Counter(v)
            print(f"  {k:11s} mean {sum(v) / len(v):.2f}  distribution "
                  + ", ".join(f"{n}:{dist[n]}" for n in sorted(dist)))

    if problems:
        print(f"\nFAIL: {len(problems)} problem(s)")
        for p in problems:
            print("  - " + p)
        return 1
    print("\nOK: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
