"""Embedding at serving time: inputs decoded in batches and run through the ONNX encoder."""
