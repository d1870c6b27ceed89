"""Export: a training run -> a bundle (ONNX encoder, FAISS gallery, manifest); a bundle's gallery rebuilt."""
