"""The `zscir-train` commands, one module per group: `train` (lincir, pic2word, tat) and `world` (world,
world-clip, world-report, world-eval). Each module's `register(app)` adds its commands with zscir's CLI
style (`zscir_infer.cli_style`): a user error is one `Error: ...` line and exit code 1, a usage error
exit code 2. Commands parse, validate, call the library and print; the library is in `training/` and
`world/`, which define no command.
"""
