"""A run of the pipeline over one output folder: checked before anything is written (`job`),
the folder claimed (`output_claim`), the rows journaled as they are made and an unfinished
run resumed from its journal (`journal`, --resume), what earlier runs did skipped (`resume`,
--skip-existing), the pipeline built (`build`) and the manifest written last (`manifest`);
`beam_options` holds what the run reads of Beam's options.

Imports the stages (`segbeam.pipeline`) and the model; never the front ends (`segbeam.commands`).
"""
