"""The model side of segbeam: U-Net builders, training, evaluation and export.

Nothing here imports `segbeam.pipeline`; the pipeline depends on the export contract defined in
`segbeam.model.export` and nothing else.
"""
