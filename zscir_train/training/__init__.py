"""Training: LinCIR (captions only), Pic2Word (images only) and Text-Anchored Tuning (image-caption pairs).

`sources` reads captions, images and pairs from text/CSV/TSV/JSONL/parquet files, folders and webdataset
shards; `masking` is LinCIR's self-masking projection with its on-disk cache; `loop` is the shared
DDP training loop (checkpoints, resume, validation, progress, JSONL log); `lincir`, `pic2word` and `tat`
are the three methods; `cli` adds their `zscir-train` commands. Presets for the papers' settings are
JSON files in `presets/`.
"""
