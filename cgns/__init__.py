"""cgns: cross-modal clustering-guided negative sampling (CM-CGNS) for chest X-ray / report pretraining."""

__version__ = "0.1.0"
