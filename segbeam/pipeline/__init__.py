"""The batch pipeline: read -> validate -> infer -> postprocess -> write.

Depends on `segbeam.model` only through the export contract (`segbeam.model.export`) and the
shared postprocessing (`segbeam.model.postprocess`).
"""
