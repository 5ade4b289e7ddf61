"""Sources that `zscir_export.triton` copies into a Triton model repository (not imported by zscir).

`model.py` is the Python-backend model of every Python step of the ensembles (preprocess, tokenizers,
normalize, compose); Triton imports it from REPO/<model>/1/model.py, where `triton_python_backend_utils`
exists and zscir_infer must be installed in the server's container (its wheel: docs/triton.md).
"""
