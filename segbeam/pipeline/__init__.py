"""The Beam pipeline's stages and formats: read (`sources`, `tfrecord`) -> validate/decode
(`validation`) -> infer (`inference`, `sessions`, `devices`) -> postprocess (`rows`,
`mask_png`, `label_files`) -> write (`sinks`, `schema`), the values between them (`elements`),
the output folder's layout (`layout`), overlap tiles and their stitching (`tiling`), and the
public transforms (`transforms`).

Uses the model side (`segbeam.model`) for the export contract and its loading and checks,
preprocessing, postprocessing, labels and metrics; never imports the run (`segbeam.run`) or
the front ends (`segbeam.commands`).
"""
