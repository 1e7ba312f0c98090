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
  echo "No LLM_VERSION set: running the embedded tiny default on the bundled data in ${TINY_DIR}."
  python -m llava.tiny --out "${TINY_DIR}"
  LLM_VERSION=${TINY_DIR}/tiny-vicuna
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
if [ "${PROXYV_START_LAYER}" = "none" ]; then PROXYV_ARGS=(); RUN_KIND=baseline
else PROXYV_ARGS=(--proxyv_start_layer "${PROXYV_START_LAYER}" --proxyv_reduce_factor 4); RUN_KIND=proxyv-s${PROXYV_START_LAYER}; fi

launch() {
  torchrun --nproc_per_node "${NUM_GPUS}" --nnodes "${NNODES}" --node_rank "${RANK}" \
    --master_addr "${MASTER_ADDR}" --master_port "${MASTER_PORT}" \
    llava/train/train.py "${DEEPSPEED_ARGS[@]}" "${PRECISION_ARGS[@]}" "${PROXYV_ARGS[@]}" --report_to "${REPORT_TO}" \
    --gradient_checkpointing "${GRADIENT_CHECKPOINTING}" "$@"
}
