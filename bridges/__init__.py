"""The torch side of hyperface-jax: embeddings in (insightface), faces out (Arc2Face).

- `bridges.embed`     face images -> unit ArcFace gallery (.npy) + listing
- `bridges.arc2face`  Arc2Face loading, Eq. 3, the id-token conditioning, the sampler
- `bridges.generate`  references -> dataset/<i>/<k>.png, resumable, multi-process
- `bridges.faces`     SCRFD detection, 5-point alignment, ArcFace features (insightface)
- `bridges.tensors`   JAX <-> torch by DLPack
"""
