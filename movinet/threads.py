"""TensorFlow's thread pools for the process, sized before TensorFlow runs anything.

Light on purpose (it imports TensorFlow only when called, and nothing of the model code), so the
processes of a search size their pools with it before the trainer loads.
"""

from __future__ import annotations


def set_threads(threads: int) -> None:
    """TensorFlow's intra- and inter-op thread pools to ``threads`` threads each.

    Call it before TensorFlow runs anything in the process (it raises RuntimeError after, unless
    the pools already have that size). A batch-1 stream step is a chain of small ops: on a 2-core
    CPU, one thread can be the faster choice (``docs/performance.md``) and leaves a core to decoding.
    """
    import tensorflow as tf

    if threads < 1:
        raise ValueError(f"threads={threads}: expected a positive number")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        raise RuntimeError(f"threads={threads}: TensorFlow already runs with "
                           f"{tf.config.threading.get_intra_op_parallelism_threads() or 'its default'} "
                           "threads in this process; set them before it runs anything") from None
