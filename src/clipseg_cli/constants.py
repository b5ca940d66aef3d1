"""Constants shared across the package: one place for every magic value."""

DEFAULT_MODEL = "CIDAS/clipseg-rd64-refined"
DEFAULT_SAM_MODEL = "nielsr/slimsam-50-uniform"  # for --refine sam: see checkpoints/registry.SAM_REGISTRY

# Preprocessing of the published checkpoints (their preprocessor_config.json).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
MODEL_INPUT_SIZE = 352

# Files of a checkpoint in the Hugging Face layout.
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"  # the published (2022) layout
PROCESSOR_FILE = "processor_config.json"  # today's save_pretrained: preprocessing under "image_processor"
SAFETENSORS_FILE = "model.safetensors"
PICKLE_FILE = "pytorch_model.bin"
TOKENIZER_FILE = "tokenizer.json"  # today's save_pretrained (fast tokenizer)
VOCAB_FILE = "vocab.json"  # the published layout: CLIP BPE vocabulary and merges
MERGES_FILE = "merges.txt"
MAX_MODEL_INPUT_SIZE = 4096  # a larger preprocessor size is refused (one 4096x4096 batch already takes GBs)
# What we fetch from the Hub: never the pickled weights.
DOWNLOAD_PATTERNS = ("*.json", "*.txt", SAFETENSORS_FILE)

# Output defaults.
DEFAULT_THRESHOLD = 0.4
PROMPT_EMBEDDING_LIMIT = 4096  # text prompts whose embeddings are kept, in memory and on disk (oldest dropped)
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own decompression-bomb limit (2x MAX_IMAGE_PIXELS)

# Every file we write ends in one of these, so a folder walk never takes our outputs as inputs.
OUTPUT_KINDS = ("mask", "overlay", "cutout")
OUTPUT_SUFFIXES = tuple(f".{kind}.png" for kind in OUTPUT_KINDS)
TEMP_SUFFIX = ".clipseg-tmp"  # files being written; renamed into place when complete
# A temporary file this old is a leftover whatever wrote it; a dead writer's on this host goes at once.
STALE_TEMP_SECONDS = 3600
