#!/usr/bin/env bash
# Parity of the bundled model on every runtime and quantization this machine runs, against the float64 reference.
#   bash benchmarks/parity_bundled.sh        -> benchmarks/results/parity_bundled.{json,md}
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
seqedge export --target onnx,onnx-ort,executorch --quantize fp32,fp16,int8-dynamic,int4-mlp -o "$work/artifact" -q
status=0
{
  echo "# Parity of the bundled model"
  echo
  echo "- command: \`bash benchmarks/parity_bundled.sh\` (seqedge export, then seqedge validate --tokens 1024)"
  python3 -c 'from seqedge.evaluate.run_info import metadata_markdown, run_metadata; print("\n".join(metadata_markdown(run_metadata())[:-1]))'
  echo
  echo '```'
  seqedge validate -m "$work/artifact" --runtimes torch,onnxruntime,onnxruntime-fused,executorch --tokens 1024 \
      --report benchmarks/results/parity_bundled.json 2>/dev/null || status=$?
  echo '```'
  echo
  echo "seqedge validate exit code: $status (1 = a variant missed its budget; the table says which and why)"
} > benchmarks/results/parity_bundled.md
cat benchmarks/results/parity_bundled.md
