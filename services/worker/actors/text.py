"""Text helpers for the demo actors: splitting a document, deriving a chunk's digest."""

from __future__ import annotations

import random
import re
from collections import Counter

_WORD = re.compile(r"[^\W\d_]{3,}", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")
_STOP = frozenset(
    "the and for are but not you all any can had her was one our out has have his how its "
    "let may new now old see two way who did get she too use that with this from they will "
    "would there their what about which when make like time just know take into year your "
    "some could them than then these other also been more were".split())
_VOCAB = ("model corpus chunk token signal cancel worker queue reaper heartbeat distill summary "
          "latency budget checkpoint attempt progress deadline process broker result ledger "
          "archive review evidence pattern measure insight").split()


def split_document(text: str, target: int) -> list[str]:
    """Splits on sentence ends into chunks of about `target` characters."""
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
    chunks: list[str] = []
    current = ""
    for sentence in sentences:
        while len(sentence) > target * 2:  # a run-on sentence still gets cut
            head, sentence = sentence[:target], sentence[target:]
            if current:
                chunks.append(current)
                current = ""
            chunks.append(head)
        if current and len(current) + len(sentence) + 1 > target:
            chunks.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}".strip()
    if current:
        chunks.append(current)
    return chunks


def generated_chunk(index: int, words: int = 60) -> str:
    """A reproducible synthetic paragraph: the same index always gives the same text."""
    rng = random.Random(index)
    sentences = []
    remaining = words
    while remaining > 0:
        n = min(remaining, rng.randint(6, 14))
        sentence = " ".join(rng.choice(_VOCAB) for _ in range(n))
        sentences.append(sentence.capitalize() + ".")
        remaining -= n
    return f"Section {index + 1}. " + " ".join(sentences)


def digest(text: str, top: int = 5) -> dict[str, object]:
    """The saved result of one chunk: its most frequent terms and a one-line extract."""
    words = [w.lower() for w in _WORD.findall(text)]
    terms = Counter(w for w in words if w not in _STOP)
    first = _SENTENCE_END.split(text.strip(), maxsplit=1)[0] if text.strip() else ""
    extract = first if len(first) <= 120 else first[:117].rstrip() + "..."
    return {
        "top_terms": [t for t, _ in terms.most_common(top)],
        "extract": extract,
        "chars": len(text),
        "words": len(words),
    }
