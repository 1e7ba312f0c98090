#!/usr/bin/env bash
# Stage 2: instruction tuning with the LLM unfrozen, starting from stage 1's mm_projector.bin.
# Paper setting: LLaVA-NeXT 779K instructions, 1 epoch, AnyRes up to 5 crops.
# With no variables set, continues from the tiny stage-1 output on the bundled instructions.
set -euo pipefail
cd "$(dirname "$0")/.."
PROXYV_START_LAYER=${PROXYV_START_LAYER:-$([ -z "${LLM_VERSION:-}" ] && echo 2 || echo 16)}
source scripts/common.sh

PRETRAIN_NAME=$(basename "${LLM_VERSION}")-${RUN_KIND}-pretrain
PRETRAIN_ADAPTER=${PRETRAIN_ADAPTER:-${OUTPUT_ROOT}/${PRETRAIN_NAME}/mm_projector.bin}
if [ ! -f "${PRETRAIN_ADAPTER}" ]; then
  echo "error: ${PRETRAIN_ADAPTER} not found; run the matching pretrain script first (or set PRETRAIN_ADAPTER)." >&2
  exit 1
fi
if [ "${TINY}" = 1 ]; then
  DATA_PATH=${TINY_DIR}/data/tiny_curriculum.json; IMAGE_FOLDER=${TINY_DIR}/data
  # The curriculum (llava/tiny/curriculum.py): single-question records in phases (shape look-ups with a
  # few background questions, then object colours, then positions, then everything), read in file order
  # for one epoch of 32: 2200 steps at a constant rate after the warm-up that decays linearly over the
  # last phase's 600 steps. The tiny pictures are square, so AnyRes gives 2 crops (base + one 336
  # tile); up to 3 for a wide or tall picture of your own.
  BATCH=32; ACCUM=1; EPOCHS=1; LR=1e-3; MAX_LEN=8192; WORKERS=0
  ORDER_ARGS=(--group_by_modality_length False --train_sampling_strategy sequential
              --lr_scheduler_type warmup_stable_decay --lr_scheduler_kwargs '{"num_decay_steps": 600, "decay_type": "linear"}')
  GRID_PINPOINTS=${GRID_PINPOINTS:-"[[336,336],[336,672],[672,336]]"}
else
  DATA_PATH=${DATA_PATH:?set DATA_PATH to the LLaVA-NeXT instruction json}; IMAGE_FOLDER=${IMAGE_FOLDER:?set IMAGE_FOLDER}
  BATCH=${BATCH:-4}; ACCUM=${ACCUM:-4}; EPOCHS=1; LR=1e-5; MAX_LEN=32768; WORKERS=4
  GRID_PINPOINTS=${GRID_PINPOINTS:-}  # empty: LLaVA-1.6's grids (base + up to 2x2 tiles = 5 crops)
  ORDER_ARGS=(--group_by_modality_length True --lr_scheduler_type cosine)
fi
if [ -n "${GRID_PINPOINTS}" ]; then PINPOINT_ARGS=(--image_grid_pinpoints "${GRID_PINPOINTS}"); else PINPOINT_ARGS=(); fi
# LORA=True (README, "LoRA fine-tuning"): the language model trains through LoRA adapters (LORA_R,
# LORA_ALPHA; LLaVA's finetune_lora.sh uses 128 / 256 at learning rate 2e-4, projector 2e-5), the
# projector and ProxyV's modules fully (both at 2e-5, MM_PROJECTOR_LR / MM_VISION_MLP_LR). The output
# folder ends in -lora and holds the adapter.
LORA_ARGS=(); LORA_SUFFIX=
if [ "${LORA:-False}" = "True" ]; then
  if [ "${TINY}" = 1 ]; then LORA_DEFAULTS=(8 16 "${LR}" "${LR}"); else LORA_DEFAULTS=(128 256 2e-4 2e-5); fi
  LR=${LORA_LR:-${LORA_DEFAULTS[2]}}
  LORA_ARGS=(--lora_enable True --lora_r "${LORA_R:-${LORA_DEFAULTS[0]}}" --lora_alpha "${LORA_ALPHA:-${LORA_DEFAULTS[1]}}"
             --mm_projector_lr "${MM_PROJECTOR_LR:-${LORA_DEFAULTS[3]}}"
             --mm_vision_mlp_lr "${MM_VISION_MLP_LR:-${LORA_DEFAULTS[3]}}")
  LORA_SUFFIX=-lora
fi
RUN_NAME=${RUN_NAME:-$(basename "${LLM_VERSION}")-${RUN_KIND}-finetune${LORA_SUFFIX}}
resolve_prompt_version

launch \
  --model_name_or_path "${LLM_VERSION}" --version "${PROMPT_VERSION}" \
  --data_path "${DATA_PATH}" --image_folder "${IMAGE_FOLDER}" \
  --pretrain_mm_mlp_adapter "${PRETRAIN_ADAPTER}" \
  --vision_tower "${VISION_MODEL_VERSION}" --mm_vision_select_layer -2 --mm_projector_type mlp2x_gelu \
  --mm_tunable_parts mm_mlp_adapter,mm_vision_mlp,mm_language_model \
  --mm_use_im_start_end False --mm_use_im_patch_token False \
  --image_aspect_ratio anyres "${PINPOINT_ARGS[@]}" --mm_patch_merge_type flat_newline \
  --output_dir "${OUTPUT_ROOT}/${RUN_NAME}" --run_name "${RUN_NAME}" \
  --num_train_epochs "${EPOCHS}" --per_device_train_batch_size "${BATCH}" --gradient_accumulation_steps "${ACCUM}" \
  --learning_rate "${LR}" --weight_decay 0. --warmup_ratio 0.03 "${ORDER_ARGS[@]}" \
  --logging_steps 1 --save_strategy steps --save_steps 1000 --save_total_limit 2 \
  --model_max_length "${MAX_LEN}" \
  --dataloader_num_workers "${WORKERS}" --lazy_preprocess True "${LORA_ARGS[@]}" "$@"
