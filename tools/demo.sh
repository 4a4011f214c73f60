#!/usr/bin/env bash
# `make demo`: converts the shared official-format fixture and classifies a real photograph with
# it through the standard mmpretrain inferencer. (Random weights: the point is the code path.)
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python tools/model_converters/spanet_official_to_mm.py \
    ../shared/fixtures/spanet_official_tiny.pth work_dirs/demo/fixture_converted.pth
