"""Turning logits into readable top-k predictions."""

import numpy as np


def top_k(logits, labels, k=5):
    """Per row of `logits`: a list of (label, probability), most likely first."""
    logits = np.asarray(logits, dtype=np.float64)
    probabilities = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    return [[(labels[i], float(row[i])) for i in indices] for row, indices in zip(probabilities, order)]


def format_top_k(predictions):
    """One short line per prediction list: 'label 0.93, label 0.04, ...'."""
    return [", ".join(f"{label} {p:.2f}" for label, p in row) for row in predictions]
