"""Visual report of a pretraining run: curves, CM-MIR reconstructions, attention maps, retrieval, clusters.

Imports are lazy so that the training loop can use `cgns.viz.tensorboard.TBWriter` without loading matplotlib.
"""

__all__ = ["write_report", "attention_localisation", "TBWriter"]


def __getattr__(name):
    if name == "write_report":
        from cgns.viz.report import write_report
        return write_report
    if name == "attention_localisation":
        from cgns.viz.localisation import attention_localisation
        return attention_localisation
    if name == "TBWriter":
        from cgns.viz.tensorboard import TBWriter
        return TBWriter
    raise AttributeError(f"module 'cgns.viz' has no attribute {name!r}")
