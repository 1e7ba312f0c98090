#!/usr/bin/env bash
# Stage 1 of the LLaVA-NeXT baseline (no ProxyV); same variables as pretrain_proxyv.sh.
PROXYV_START_LAYER=none exec bash "$(dirname "$0")/pretrain_proxyv.sh" "$@"
