"""Prediction: a bundle's neighbours -> values or classes (numpy, ONNX Runtime, FAISS; no torch, no training code)."""
