"""What kind of tensor a model output is, which decides the metrics that say anything about it.

- ``scores``: class scores or probabilities, one row per sample over the last axis. Judged by top-1 and
  top-5 agreement (does int8 pick the same class?); SQNR alongside.
- ``regression``: boxes, regressed values, feature maps, embeddings. Judged by SQNR, max/mean absolute error
  and cosine similarity; an arg-max over such a row means nothing ("top-1 agree 5.68%" on a detector's boxes).
- ``indices``: integer or bool outputs (labels, token ids, a CTC path). Judged by the share of equal values.

The heuristic, first rule that applies, on the float model's output:

1. an integer or bool dtype -> ``indices``;
2. a name containing a regression hint (box, bbox, reg, coord, landmark, embed, feature, hidden, pool,
   vector, depth, mask, offset) -> ``regression``; a name containing a score hint (logit, prob, score,
   class, cls, label, softmax) with a last axis of at least 2 -> ``scores``;
3. rows that are probability distributions (values in [0, 1] summing to 1 over the last axis, at least 2
   classes) -> ``scores``;
4. rows of unit L2 norm with negative values (normalised embeddings) -> ``regression``;
5. a 2-D ``[batch, classes]`` tensor with at least 2 classes -> ``scores``;
6. anything else (3-D and up: detector heads, feature maps, sequences of vectors) -> ``regression``.

An un-normalised embedding ``[batch, dim]`` without a telling name falls under rule 5; name the kind
explicitly (``compare(..., output_kinds={"sentence_embedding": "regression"})`` or
``qrt report --output-kind sentence_embedding=regression``) wherever the heuristic guesses wrong.
"""
from __future__ import annotations

import re

import numpy as np

from ..errors import InvalidArgument

KINDS = ("scores", "regression", "indices")

_REGRESSION_HINT = re.compile(r"box|reg|coord|landmark|embed|feature|feat|hidden|pool|vector|depth|mask|offset",
                              re.IGNORECASE)
_SCORE_HINT = re.compile(r"logit|prob|score|class|cls|label|softmax", re.IGNORECASE)


def output_kind(name: str, values) -> str:
    """The kind of output ``name`` given its float-model ``values`` (all samples); see the module docstring."""
    values = np.asarray(values)
    if values.dtype.kind in "biu":
        return "indices"
    classes = values.shape[-1] if values.ndim >= 1 else 1
    if _REGRESSION_HINT.search(name):
        return "regression"
    if classes < 2:
        return "regression"
    if _SCORE_HINT.search(name):
        return "scores"
    rows = values.reshape(-1, classes).astype(np.float64)
    if rows.size and rows.min() >= 0.0 and rows.max() <= 1.0 and np.allclose(rows.sum(-1), 1.0, atol=1e-3):
        return "scores"
    if rows.size and rows.min() < 0.0 and np.allclose(np.linalg.norm(rows, axis=-1), 1.0, atol=1e-3):
        return "regression"
    return "scores" if values.ndim == 2 else "regression"


def check_kind(name: str, kind: str) -> str:
    if kind not in KINDS:
        raise InvalidArgument(f"output {name!r}: unknown output kind {kind!r}; expected one of {', '.join(KINDS)}")
    return kind
