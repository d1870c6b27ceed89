"""supemb: embeddings whose geometry follows the labels.

Train encoders with supervised contrastive losses (SupCon for classes,
SupCR / Rank-N-Contrast for continuous targets, targeted SupCon for
long-tailed classes), export them to ONNX and serve them with FAISS kNN.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
