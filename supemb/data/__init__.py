"""Data: files -> labelled records (image decoding and layouts, EEG files and targets, the one
split rule) and the synthetic generators the tests and default bundles use. No torch."""
