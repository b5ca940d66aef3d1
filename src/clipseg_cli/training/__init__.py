"""Fine-tuning and evaluation on a user's own masks (``clipseg train``, ``clipseg eval``).

- `manifest`: the records (image, prompt, mask) that ``clipseg batch --json`` prints, read and checked.
- `metrics`: the CLIPSeg paper's metrics, computed as its code computes them.
- `evaluate`: runs a model over records and scores them (``clipseg eval``, validation in training).
- `augment`: crops and flips that keep the prompted objects and the prompt's meaning.
- `cache`: a bounded on-disk cache of the frozen image tower's activations, memory-mapped.
- `trainer`: trains the decoder with both CLIP towers frozen.
- `export`: saves a checkpoint in the published layout that transformers loads.
"""
