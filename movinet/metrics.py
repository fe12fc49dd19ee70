"""The metrics training and evaluation share: per-batch sums (loss, top-1, top-5, clips), then
their means, so batches of any size and replicas add up exactly."""

from __future__ import annotations

from typing import Mapping

import tensorflow as tf


def batch_counts(labels: tf.Tensor, logits: tf.Tensor, num_classes: int,
                 label_smoothing: float = 0.0) -> dict[str, tf.Tensor]:
    """Sums over a batch: cross-entropy (with label smoothing), top-1 and top-5 hits, clips."""
    labels = tf.cast(labels, tf.int32)
    targets = tf.one_hot(labels, num_classes)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    loss = tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)

    def hits(k):
        return tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, min(k, num_classes)), tf.float32))

    return {"loss": tf.reduce_sum(loss), "top1": hits(1), "top5": hits(5),
            "count": tf.cast(tf.size(labels), tf.float32)}


def summarize_counts(totals: Mapping[str, float]) -> dict[str, float]:
    """Means of summed counts: loss, top1, top5 per clip, and the number of clips."""
    count = totals.get("count", 0.0)
    if not count:
        return {"loss": float("nan"), "top1": float("nan"), "top5": float("nan"), "count": 0}
    return {"loss": totals["loss"] / count, "top1": totals["top1"] / count, "top5": totals["top5"] / count,
            "count": int(count)}
