#!/usr/bin/env bash
# Stage 1: train the projector and ProxyV's guided-update modules on captions (LLM frozen).
# Paper setting: ShareGPT4V 1.2M captions, 1 epoch, r = 4, Vicuna-1.5-7B + CLIP-L/336.
# With no variables set, runs a short real training of the tiny model on the bundled data.
set -euo pipefail
cd "$(dirname "$0")/.."
PROXYV_START_LAYER=${PROXYV_START_LAYER:-$([ -z "${LLM_VERSION:-}" ] && echo 2 || echo 16)}
source scripts/common.sh

if [ "${TINY}" = 1 ]; then
  DATA_PATH=${TINY_DIR}/data/tiny_captions.json; IMAGE_FOLDER=${TINY_DIR}/data
  # One caption per training picture (2000): 125 steps of 16, under a minute on 2 CPU cores.
  BATCH=16; ACCUM=1; EPOCHS=1; LR=2e-3; MAX_LEN=2048; WORKERS=0
else
  DATA_PATH=${DATA_PATH:?set DATA_PATH to the ShareGPT4V caption json}; IMAGE_FOLDER=${IMAGE_FOLDER:?set IMAGE_FOLDER}
  BATCH=${BATCH:-32}; ACCUM=${ACCUM:-1}; EPOCHS=1; LR=1e-3; MAX_LEN=4096; WORKERS=4
fi
RUN_NAME=${RUN_NAME:-$(basename "${LLM_VERSION}")-${RUN_KIND}-pretrain}

launch \
  --model_name_or_path "${LLM_VERSION}" --version plain \
  --data_path "${DATA_PATH}" --image_folder "${IMAGE_FOLDER}" \
  --vision_tower "${VISION_MODEL_VERSION}" --mm_vision_select_layer -2 --mm_projector_type mlp2x_gelu \
  --mm_tunable_parts mm_mlp_adapter,mm_vision_mlp \
  --mm_use_im_start_end False --mm_use_im_patch_token False \
  --image_aspect_ratio pad --group_by_modality_length False \
  --output_dir "${OUTPUT_ROOT}/${RUN_NAME}" --run_name "${RUN_NAME}" \
  --num_train_epochs "${EPOCHS}" --per_device_train_batch_size "${BATCH}" --gradient_accumulation_steps "${ACCUM}" \
  --learning_rate "${LR}" --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type cosine \
  --logging_steps 1 --save_strategy steps --save_steps 500 --save_total_limit 2 \
  --model_max_length "${MAX_LEN}" \
  --dataloader_num_workers "${WORKERS}" --lazy_preprocess True "$@"
