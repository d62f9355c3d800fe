"""Names and defaults shared across the pipeline's modules and its command line.

Imports nothing, so the run options (`segbeam.options`) and the results readers can use them
without loading Beam or TensorFlow. The output folder's names are `pipeline.layout`'s.
"""

# Beam metrics namespace of every counter segbeam reports.
METRICS_NAMESPACE = "segbeam"

# RunInference model handlers (`inference`), the default first.
HANDLER_TFX_BSL = "tfx-bsl"
HANDLER_SAVED_MODEL = "saved-model"
HANDLERS = (HANDLER_TFX_BSL, HANDLER_SAVED_MODEL)
# On a GPU worker the model is nearly free and the CPU work around it sets the rate; there the
# saved-model handler, with no PredictionLog round trip, does more images per CPU second and
# per second of the GIL (BENCHMARKS.md, "The pipeline's own cost"). `segbeam submit` and the
# Flex Template use it unless --inference-handler says otherwise.
GPU_JOB_HANDLER = HANDLER_SAVED_MODEL

# --input-format: 'auto' tells shards from images by name, or else by their first bytes.
FORMAT_AUTO = "auto"
FORMAT_IMAGES = "images"
FORMAT_TFRECORD = "tfrecord"
FORMAT_PARQUET = "parquet"
FORMAT_WEBDATASET = "webdataset"
INPUT_FORMATS = (FORMAT_AUTO, FORMAT_IMAGES, FORMAT_TFRECORD, FORMAT_PARQUET, FORMAT_WEBDATASET)

# WebDataset samples (--image-key, --label-key where the tf.Example defaults stand): the image
# member's extensions, the first present taken, as WebDataset's "jpg;png" keys are; the
# extensions segbeam decodes, and those it refuses with a reason (webp, tiff) rather than as a
# sample with no image. The ground truth: a `seg.png` member (or `seg.` another format's
# extension), as `segbeam pack` writes it.
WEBDATASET_IMAGE_KEYS = ("jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff")
WEBDATASET_LABEL_KEYS = ("seg.png", "seg.gif", "seg.bmp", "seg.jpg", "seg.jpeg")

# Input limits: images declaring more pixels, and larger files or TFRecord records, are
# refused before they are decoded or read.
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_FILE_BYTES = 256 << 20
DEFAULT_BATCH_SIZE = 32

# Tiled inference (`segbeam run --tile`, `segbeam.pipeline.tiled`): its own pixel cap, since an
# image is decoded whole at full resolution there; how tiles' predictions are put together.
DEFAULT_MAX_TILED_PIXELS = 100_000_000
TILE_AUTO = "auto"
BLEND_CENTRE = "centre"
BLEND_GAUSSIAN = "gaussian"
TILE_BLENDS = (BLEND_CENTRE, BLEND_GAUSSIAN)

# The breaker (`segbeam.options.BreakerLimits`): a worker process stops the run when this many
# batches' worth of images in a row fail in the model, each alone too, or more than this share
# of the first images it infers.
DEFAULT_BREAKER_BATCHES = 3
DEFAULT_BREAKER_SHARE = 0.5
DEFAULT_BREAKER_FIRST_IMAGES = 200

# Image files read at a time per reading thread (`sources.ReadFile`): enough to keep a 4-vCPU
# GPU worker at its CPU bound at 50 ms per object-store request (docs/capacity-plan.md).
DEFAULT_READ_CONCURRENCY = 16
# Concurrent slices of each batch, and postprocessing threads per worker thread (`segbeam.options`).
DEFAULT_INFERENCE_SLICES = 2
DEFAULT_POSTPROCESS_THREADS = 1
# --segments-files: the most Parquet files the segments table is written as. Beam writes every
# one of them, empty or not; at 256 MB a file (docs/capacity-plan.md) this is a 2.5 TB table.
MAX_SEGMENTS_FILES = 10_000
