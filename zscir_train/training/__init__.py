"""Training: LinCIR (captions only), Pic2Word (images only) and Text-Anchored Tuning (image-caption pairs).

`sources` reads captions, images and pairs from text/CSV/TSV/JSONL/parquet files, folders and webdataset
shards; `masking` is LinCIR's self-masking projection with its on-disk cache. The shared loop is split
by concern: `config` (options and the presets in `presets/`), `distributed` (ranks and devices), `state`
(random streams, the resumable checkpoint) and `loop` (the training loop itself); `validation` scores
the weights being trained on CIR val splits. `phi_task` is what the phi methods share; `lincir`,
`pic2word` and `tat` are the three methods (`contrastive` holds what the image-side ones share).
`world_eval` scores trained artifacts on a shapes world. The `zscir-train` commands are in
`zscir_train.commands`.
"""
