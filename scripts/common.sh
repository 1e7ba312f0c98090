#!/usr/bin/env bash
# Shared by the launch scripts: the tiny embedded default, the device, and the launcher.
# Real runs set LLM_VERSION, VISION_MODEL_VERSION, DATA_PATH, IMAGE_FOLDER (see README.md).

TINY_DIR=${TINY_DIR:-playground/tiny}
OUTPUT_ROOT=${OUTPUT_ROOT:-checkpoints}
REPORT_TO=${REPORT_TO:-none}
NNODES=${NNODES:-1}
RANK=${RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}

if [ -z "${LLM_VERSION:-}" ]; then
  TINY=1
  # TINY_FAMILY picks the tiny LLM's decoder family (llama, mistral, qwen2, qwen3, phi3): the same
  # tiny shape, tokenizer and text pretraining in that family's own classes (tiny-<family>).
  TINY_FAMILY=${TINY_FAMILY:-llama}
  echo "No LLM_VERSION set: running the embedded tiny default (${TINY_FAMILY}) on the bundled data in ${TINY_DIR}."
  python -m llava.tiny --out "${TINY_DIR}" --family "${TINY_FAMILY}"
  if [ "${TINY_FAMILY}" = "llama" ]; then LLM_VERSION=${TINY_DIR}/tiny-vicuna; else LLM_VERSION=${TINY_DIR}/tiny-${TINY_FAMILY}; fi
  PROMPT_VERSION=${PROMPT_VERSION:-v1}  # every tiny LLM is pretrained on Vicuna-format chats
  VISION_MODEL_VERSION=${TINY_DIR}/tiny-clip-vit-336
else
  TINY=0
  VISION_MODEL_VERSION=${VISION_MODEL_VERSION:-openai/clip-vit-large-patch14-336}
fi

if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  NUM_GPUS=${NUM_GPUS:-$(python -c "import torch; print(torch.cuda.device_count())")}
  PRECISION_ARGS=(--bf16 True --tf32 True)
  DEEPSPEED_CONFIG=${DEEPSPEED_CONFIG:-zero3.json}
  GRADIENT_CHECKPOINTING=${GRADIENT_CHECKPOINTING:-True}
else
  # On CPU, DeepSpeed is opt-in (DEEPSPEED_CONFIG=zero3.json uses its CPU accelerator over gloo):
  # for the tiny model its partitioning only adds overhead. bf16 works on CPU; fp16 and tf32 do not.
  export DS_ACCELERATOR=cpu
  NUM_GPUS=${NUM_GPUS:-1}
  PRECISION_ARGS=()
  DEEPSPEED_CONFIG=${DEEPSPEED_CONFIG:-none}
  GRADIENT_CHECKPOINTING=${GRADIENT_CHECKPOINTING:-False}
fi

if [ "${DEEPSPEED_CONFIG}" = "none" ]; then DEEPSPEED_ARGS=(); else DEEPSPEED_ARGS=(--deepspeed "${DEEPSPEED_CONFIG}"); fi

# ProxyV is on when PROXYV_START_LAYER is a number; PROXYV_START_LAYER=none trains the baseline.
# PROXYV_REDUCE_FACTOR: proxies per crop side = patches per side / this (4 for CLIP-L/336's 24x24: 6x6 proxies;
# 2 for the tiny CLIP's 6x6: 3x3 proxies, one per scene cell).
PROXYV_REDUCE_FACTOR=${PROXYV_REDUCE_FACTOR:-$([ "${TINY}" = 1 ] && echo 2 || echo 4)}
if [ "${PROXYV_START_LAYER}" = "none" ]; then PROXYV_ARGS=(); RUN_KIND=baseline
else PROXYV_ARGS=(--proxyv_start_layer "${PROXYV_START_LAYER}" --proxyv_reduce_factor "${PROXYV_REDUCE_FACTOR}"); RUN_KIND=proxyv-s${PROXYV_START_LAYER}; fi
# PROXYV_VARIANT (README, "Study variants and token-reduction baselines") trains a study variant from
# PROXYV_START_LAYER instead of ProxyV: skip_vision_attention, vision_mlp (mask_vision_attention is training-free).
if [ -n "${PROXYV_VARIANT:-}" ] && [ "${PROXYV_VARIANT}" != "proxyv" ]; then
  if [ "${PROXYV_START_LAYER}" = "none" ]; then echo "PROXYV_VARIANT=${PROXYV_VARIANT} needs PROXYV_START_LAYER (a layer, not none)." >&2; exit 1; fi
  PROXYV_ARGS+=(--proxyv_variant "${PROXYV_VARIANT}"); RUN_KIND=${PROXYV_VARIANT}-s${PROXYV_START_LAYER}
fi

# Token-reduction baselines (README, "Study variants and token-reduction baselines"):
# VISION_TOKEN_REDUCTION=visionzip (VISIONZIP_DOMINANT / VISIONZIP_CONTEXTUAL, default 360 / 40 of a crop's 576
# tokens; the tiny CLIP's 36 get the same shares rounded as the benchmarks do, 22 / 2);
# PYRAMID_DROP_LAYERS=12,20,26 (PYRAMID_DROP_RATIO, default 0.5). With ProxyV, VisionZip needs LEARN_PROXY=True.
REDUCTION_ARGS=()
if [ -n "${VISION_TOKEN_REDUCTION:-}" ] && [ "${VISION_TOKEN_REDUCTION}" != "none" ]; then
  if [ "${TINY}" = 1 ]; then VISIONZIP_DEFAULTS=(22 2); else VISIONZIP_DEFAULTS=(360 40); fi
  REDUCTION_ARGS+=(--vision_token_reduction "${VISION_TOKEN_REDUCTION}" --visionzip_dominant "${VISIONZIP_DOMINANT:-${VISIONZIP_DEFAULTS[0]}}"
                   --visionzip_contextual "${VISIONZIP_CONTEXTUAL:-${VISIONZIP_DEFAULTS[1]}}"); RUN_KIND=${RUN_KIND}-${VISION_TOKEN_REDUCTION}
fi
if [ -n "${PYRAMID_DROP_LAYERS:-}" ] && [ "${PYRAMID_DROP_LAYERS}" != "none" ]; then
  REDUCTION_ARGS+=(--pyramid_drop_layers "${PYRAMID_DROP_LAYERS}" --pyramid_drop_ratio "${PYRAMID_DROP_RATIO:-0.5}")
  RUN_KIND=${RUN_KIND}-pdrop
fi
if [ "${LEARN_PROXY:-False}" = "True" ]; then REDUCTION_ARGS+=(--learn_proxy True); fi

# Stage 2's chat template (--version): PROMPT_VERSION when set, else the one the LLM's family was tuned
# with, read from its config.json and tokenizer files (python -m llava.conversation --model; the
# tiny default is a Vicuna-like Llama: v1). Stage 1 always trains with plain. Fails, naming
# PROMPT_VERSION as the fix, for a family it cannot tell.
resolve_prompt_version() {
  if [ -z "${PROMPT_VERSION:-}" ]; then
    PROMPT_VERSION=$(python -m llava.conversation --model "${LLM_VERSION}") || return 1
  fi
  echo "Stage 2 conversation template: ${PROMPT_VERSION} (set PROMPT_VERSION to choose another)."
}

launch() {
  torchrun --nproc_per_node "${NUM_GPUS}" --nnodes "${NNODES}" --node_rank "${RANK}" \
    --master_addr "${MASTER_ADDR}" --master_port "${MASTER_PORT}" \
    llava/train/train.py "${DEEPSPEED_ARGS[@]}" "${PRECISION_ARGS[@]}" "${PROXYV_ARGS[@]}" "${REDUCTION_ARGS[@]}" --report_to "${REPORT_TO}" \
    --gradient_checkpointing "${GRADIENT_CHECKPOINTING}" "$@"
}
