"""``clipseg label``: a folder of images into a training dataset (COCO, YOLO, VOC, Label Studio), on the engine,
fingerprints and shards of ``clipseg batch``.

    from clipseg_cli.run.job import Job
    from clipseg_cli.label import LabelJob, label, parse_classes

    run = LabelJob(tuple(parse_classes(["car=red car,automobile", "tree"])), Job(), format="yolo")
    outcomes = list(label("CIDAS/clipseg-rd64-refined", ["photos/"], "dataset/", run))

Modules: classes (classes, splits), instances (components, RLE), labeller (the Engines and the pipeline),
store (records and the dataset's marker), media (image copies), one writer per format (coco, yolo, voc,
labelstudio), shards (index files, shard manifests and the merge), preview, run (the one order of a run).
"""

from clipseg_cli.label.classes import LabelClass, Splits, parse_classes, parse_splits
from clipseg_cli.label.formats import FORMATS
from clipseg_cli.label.index_files import merge
from clipseg_cli.label.label_run import LabelJob, Labelling, Outcome, label

__all__ = ["FORMATS", "LabelClass", "LabelJob", "Labelling", "Outcome", "Splits", "label", "merge", "parse_classes",
           "parse_splits"]
