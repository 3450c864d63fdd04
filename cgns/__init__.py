"""cgns: cross-modal clustering-guided negative sampling (CM-CGNS) for chest X-ray / report pretraining."""

__version__ = "0.1.0"

__all__ = ["load_model"]


def __getattr__(name):
    # lazy, so that `import cgns` stays light (the model API imports torch and transformers)
    if name == "load_model":
        from cgns.model_api import load_model
        return load_model
    raise AttributeError(f"module 'cgns' has no attribute {name!r}")
