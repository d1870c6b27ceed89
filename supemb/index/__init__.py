"""Index: embeddings -> a searchable gallery (FAISS flat, IVF or HNSW; `gallery.GalleryIndex`)."""
