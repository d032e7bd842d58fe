#!/usr/bin/env bash
# The whole product on a GPU machine, end to end: `coordinator run` starts the CUDA agent, which
# registers its GPU through NVML and runs the four tasks of an experiment (4-bit zero-shot eval,
# bf16 zero-shot eval, LoRA finetune, eval with the adapter) on the embedded dataset.
#
#   BIN_DIR=.bin bash bench/gpu/e2e.sh
#
# The model is SmolLM2-135M's shape with random weights (written here by torch_ref.py) and the real
# SmolLM2 tokenizer and chat template, exported from the GGUF on the build machine
# (`gpucheck hf-tokenizer --gguf … --out $TOK_DIR`): the GGUF itself is too large to carry. With
# random weights the scores mean nothing; what is checked is that every task runs on the GPU and
# the outputs are written. Inputs: $BIN_DIR/{coordinator,agent}[.gz], $TOK_DIR (default
# .assets/smollm2-tokenizer). Writes $OUT/e2e.tar.gz (results, predictions, report, plots) and $OUT/e2e-agent.log.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN_DIR=${BIN_DIR:-$HERE/bin}
TOK_DIR=${TOK_DIR:-.assets/smollm2-tokenizer}
WORK=${WORK:-/tmp/sizespec-e2e}
OUT=${OUT:-$WORK/out}
mkdir -p "$WORK/bin" "$OUT"
for b in coordinator agent; do
  if [ -f "$BIN_DIR/$b.gz" ]; then gunzip -c "$BIN_DIR/$b.gz" > "$WORK/bin/$b"; else cp "$BIN_DIR/$b" "$WORK/bin/$b"; fi
  chmod +x "$WORK/bin/$b"
done
MODEL=$WORK/smollm2-random
if [ ! -f "$MODEL/config.json" ]; then
  python3 "$HERE/torch_ref.py" weights --shape smollm2 --dtype bf16 --seed 7 --out "$MODEL"
fi
cp "$TOK_DIR/tokenizer.json" "$TOK_DIR/tokenizer_config.json" "$MODEL/"
cat > "$WORK/e2e.toml" <<TOML
name = "gpu-e2e"
device = "cuda:0"
dtype = "bf16"
[data]
max_eval_samples = 96
max_train_samples = 192
[data.source]
kind = "embedded"
codes = 16
per_code = 40
[data.split]
train = 0.6
validation = 0.1
test = 0.3
[lora]
r = 16
alpha = 32.0
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
[training]
learning_rate = 0.001
epochs = 2
batch_size = 8
max_length = 512
[generation]
max_new_tokens = 12
batch_size = 32
[[llm_models]]
name = "$MODEL"
size = "135M"
label = "Random-135M"
description = "SmolLM2-135M shape, random weights, 4-bit"
load_in_4bit = true
[[slm_models]]
name = "$MODEL"
size = "135M"
label = "Random-135M"
description = "SmolLM2-135M shape, random weights, LoRA r16 in bf16"
TOML
nvidia-smi --query-gpu=name,uuid,memory.total,memory.used --format=csv
rc=0
RUN=$WORK/run
rm -rf "$RUN"
SIZESPEC_LOG=info timeout "${E2E_TIMEOUT:-420}" "$WORK/bin/coordinator" run "$WORK/e2e.toml" \
  --agent-bin "$WORK/bin/agent" --output "$RUN" || rc=$?
echo "coordinator exit: $rc"
# Everything in one archive (the device tool brings back few files), the agent's log beside it.
tar czf "$OUT/e2e.tar.gz" -C "$WORK" run e2e.toml
cp "$RUN"/.sizespec/agents/*.log "$OUT/e2e-agent.log" 2>/dev/null || true
grep -h -m4 -i "device\|registered" "$OUT/e2e-agent.log" || true
python3 - "$RUN/results.json" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
for k, v in r.items():
    if k == "meta":
        continue
    m, perf, tr = v.get("metrics", {}), v.get("performance", {}), v.get("training_metrics") or {}
    print(k, {x: m.get(x) for x in ("samples", "exact_match", "invalid_code_rate", "samples_per_s")},
          {x: perf.get(x) for x in ("device_name", "peak_memory_mib", "load_time_s")},
          {x: tr.get(x) for x in ("steps", "final_train_loss", "best_validation_loss", "tokens_per_s")})
PY
exit $rc
