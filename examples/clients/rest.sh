#!/usr/bin/env bash
# REST with curl against `make demo` (REST on localhost:8501; HOST=host:port to change it).
set -euo pipefail
HOST=${HOST:-localhost:8501}
ROW=$(python3 -c 'print([0.1] * 64)')
curl() { command curl "$@"; echo; }   # a newline after each answer

# --- TF Serving REST API -------------------------------------------------------------------
curl -s "$HOST/v1/models"                                   # every model and its versions
curl -s "$HOST/v1/models/mlp"                               # status of mlp's versions
curl -s "$HOST/v1/models/mlp/metadata"                      # its signatures
curl -s -X POST "$HOST/v1/models/mlp:predict" \
     -d "{\"instances\": [$ROW]}"                           # row format
curl -s -X POST "$HOST/v1/models/mlp/versions/1:predict" \
     -d "{\"inputs\": {\"input\": [$ROW]}}"                 # columnar format, version 1
curl -s -X POST "$HOST/v1/models/mlp/labels/canary:predict" \
     -d "{\"instances\": [$ROW]}"                           # whatever version "canary" names

# --- KServe V2 REST API --------------------------------------------------------------------
curl -s "$HOST/v2/health/ready"
curl -s "$HOST/v2/models/twoio"                             # metadata
curl -s -X POST "$HOST/v2/models/twoio/infer" -H 'content-type: application/json' -d '{
  "inputs": [
    {"name": "a", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
    {"name": "b", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}
  ],
  "outputs": [{"name": "sum"}]
}'
curl -s -X POST "$HOST/v2/repository/index" -d '{}'         # every model version and its state
command curl -s "$HOST/metrics" | grep '^pyserving_requests_total' | head -5
