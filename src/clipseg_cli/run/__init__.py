"""One run, in one process: the work items (`inputs`), the files each writes (`outputs`), the skip-or-redo
decision per (image, target) (`targets`), the engine that decodes, runs the model and writes (`engine`), and
the `Job` that puts them in order (`job`)."""
