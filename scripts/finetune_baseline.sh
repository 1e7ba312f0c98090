#!/usr/bin/env bash
# Stage 2 of the LLaVA-NeXT baseline (no ProxyV); same variables as finetune_proxyv.sh.
PROXYV_START_LAYER=none exec bash "$(dirname "$0")/finetune_proxyv.sh" "$@"
