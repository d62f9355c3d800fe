"""The model side of segbeam: U-Net builders, training, evaluation, conversion and export, and
the export's contract with the pipeline (`contract`) and its safety checks.

Nothing here imports `segbeam.pipeline`, `segbeam.run` or `segbeam.commands`.
"""
