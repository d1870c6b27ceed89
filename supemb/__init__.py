"""supemb: embeddings whose geometry follows the labels.

Train encoders with supervised contrastive losses (SupCon for classes,
SupCR / Rank-N-Contrast for continuous targets, targeted SupCon for
long-tailed classes), export them to ONNX and serve them with FAISS kNN.

    import supemb
    supemb.predict_age("face.jpg")                 # default demo bundle
    b = supemb.load_bundle("my_bundle")            # your own export
    b.predict(["a.jpg", "b.jpg"])                  # values/classes with neighbours

Serving imports load lazily, so `import supemb` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_bundle", "predict_age", "predict_brain_age", "predict_temperature",
           "Bundle", "Prediction", "UnfamiliarInputWarning", "DemoModelWarning"]

_LAZY = {
    "load_bundle": "supemb.predict.bundle",
    "Bundle": "supemb.predict.bundle",
    "Prediction": "supemb.predict.bundle",
    "predict_age": "supemb.predict.api",
    "predict_temperature": "supemb.predict.api",
    "predict_brain_age": "supemb.predict.api",
    "UnfamiliarInputWarning": "supemb.predict.api",  # to filter or catch: warnings.filterwarnings(category=...)
    "DemoModelWarning": "supemb.predict.api",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'supemb' has no attribute {name!r}")
