#!/usr/bin/env python3
"""How far PyTorch's own bf16 logits are from its f32 logits (the bf16 noise floor of a random-weight
model at full depth), to read ours-bf16-vs-f32 against. Usage: bf16_floor.py BF16_REF F32_REF"""
import json
import sys

import torch
from safetensors.torch import load_file

a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
out = {}
for k in sorted(b):
    if k.startswith("prefill") or k.startswith("decode"):
        x, y = a[k].double(), b[k].double()
        out[k] = {"rel_err": (torch.linalg.norm(x - y) / torch.linalg.norm(y)).item(),
                  "argmax_agree": (x.argmax(-1) == y.argmax(-1)).double().mean().item()}
print(json.dumps({"torch_bf16_vs_torch_f32": out}))
