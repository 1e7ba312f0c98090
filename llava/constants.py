"""Constants shared across the package, with LLaVA's names and values.

`IMAGE_TOKEN_INDEX` marks where an image goes in `input_ids` (it is never a real vocabulary id and
is replaced by the image's embeddings in the model); `IGNORE_INDEX` marks label positions that
carry no loss. The string tokens are the placeholders used in prompts and data records.
"""

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200

DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"
IMAGE_PLACEHOLDER = "<image-placeholder>"
