#!/usr/bin/env python3
"""PyTorch reference and baseline for sizespec's GPU checks and benchmarks.

Runs on the GPU machine (PyTorch + transformers + peft; no network). Subcommands:

  weights  --shape S --out DIR [--dtype bf16] [--seed 0] [--layers N]
      random-weight HF model folder (config.json + model.safetensors) for one of the real shapes;
      both engines read the same file.
  logits   --model DIR --out FILE.safetensors [--batch 2 --prompt 64 --decode 4]
      fixed token ids (seeded), prefill logits of the last position and the logits of `decode` cached
      decode steps fed with fixed tokens; writes ids + logits for the Rust side to compare.
  lora-grad --model DIR --out FILE.safetensors [--r 8]
      peft LoRA (all seven projections) with B initialised non-zero (seeded), one forward/backward on
      fixed ids with answer-only labels; writes the LoRA A/B values and their gradients under peft's names.
  bench    --shape S [--what train,prefill,generate,decode] [--json OUT]
      the baselines of bench/gpu: peft LoRA training tokens/s + peak memory (b8 x 512, r16/r64, all
      projections, no checkpointing), sdpa prefill tokens/s (b8 x 512), HF generate samples/s on 256
      prompts of ~1,200 tokens with 16 new tokens (best batch size), batch-1 greedy decode tokens/s.

Shapes follow docs/gpu.md (the real models' config.json values).
"""
import argparse
import json
import os
import sys
import time

import torch

SHAPES = {
    "llama3b": dict(model_type="llama", hidden_size=3072, num_hidden_layers=28, num_attention_heads=24,
                    num_key_value_heads=8, intermediate_size=8192, vocab_size=128256, rope_theta=500000.0,
                    rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                    tie_word_embeddings=True, rms_norm_eps=1e-5, max_position_embeddings=131072,
                    bos_token_id=128000, eos_token_id=[128001, 128008, 128009], head_dim=128),
    "qwen3b": dict(model_type="qwen2", hidden_size=2048, num_hidden_layers=36, num_attention_heads=16,
                   num_key_value_heads=2, intermediate_size=11008, vocab_size=151936, rope_theta=1000000.0,
                   tie_word_embeddings=True, rms_norm_eps=1e-6, max_position_embeddings=32768,
                   use_sliding_window=False, sliding_window=None, bos_token_id=151643, eos_token_id=151645),
    "llama8b": dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=8, intermediate_size=14336, vocab_size=128256, rope_theta=500000.0,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                    tie_word_embeddings=False, rms_norm_eps=1e-5, max_position_embeddings=131072,
                    bos_token_id=128000, eos_token_id=[128001, 128008, 128009], head_dim=128),
    # SmolLM2-135M-Instruct's shape (the end-to-end run gives it the real tokenizer: e2e.sh).
    "smollm2": dict(model_type="llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, intermediate_size=1536, vocab_size=49152, rope_theta=100000.0,
                    tie_word_embeddings=True, rms_norm_eps=1e-5, max_position_embeddings=8192,
                    bos_token_id=1, eos_token_id=2, head_dim=64),
    "mistral7b": dict(model_type="mistral", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, intermediate_size=14336, vocab_size=32768, rope_theta=1000000.0,
                      tie_word_embeddings=False, rms_norm_eps=1e-5, max_position_embeddings=32768,
                      sliding_window=None, bos_token_id=1, eos_token_id=2, head_dim=128),
}
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DT = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def make_config(shape, layers=None):
    from transformers import AutoConfig
    d = dict(SHAPES[shape])
    if layers:
        d["num_hidden_layers"] = layers
    mt = d.pop("model_type")
    cfg = AutoConfig.for_model(mt, **d)
    cfg._attn_implementation = "sdpa"
    return cfg


def build(shape, dtype, seed, layers=None, device="cuda"):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    cfg = make_config(shape, layers)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=DT[dtype])
    model.eval()
    return model


def cmd_weights(a):
    m = build(a.shape, a.dtype, a.seed, a.layers)
    m.save_pretrained(a.out, safe_serialization=True, max_shard_size="50GB")
    print(json.dumps({"out": a.out, "params": sum(p.numel() for p in m.parameters())}))


def load(model_dir, dtype):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=DT[dtype], attn_implementation="sdpa").cuda()
    m.eval()
    return m


def fixed_ids(vocab, batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, min(vocab, 32000), (batch, length), generator=g)


@torch.no_grad()
def cmd_logits(a):
    from safetensors.torch import save_file
    m = load(a.model, a.dtype)
    vocab = m.config.vocab_size
    ids = fixed_ids(vocab, a.batch, a.prompt, 1).cuda()
    nxt = fixed_ids(vocab, a.batch, a.decode, 2).cuda()
    out = m(input_ids=ids, use_cache=True)
    past = out.past_key_values
    res = {"ids": ids.int().cpu(), "next_ids": nxt.int().cpu(), "prefill_last": out.logits[:, -1].float().cpu()}
    for s in range(a.decode):
        o = m(input_ids=nxt[:, s:s + 1], past_key_values=past, use_cache=True)
        past = o.past_key_values
        res[f"decode_{s}"] = o.logits[:, -1].float().cpu()
    save_file({k: v.contiguous() for k, v in res.items()}, a.out)
    print(json.dumps({"out": a.out, "keys": sorted(res)}))


def cmd_lora_grad(a):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    m = load(a.model, a.dtype)
    pm = get_peft_model(m, LoraConfig(r=a.r, lora_alpha=2 * a.r, lora_dropout=0.0, target_modules=PROJ,
                                      task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(7)
    for n, p in pm.named_parameters():
        if "lora_" in n:
            with torch.no_grad():
                p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p.dtype))
    ids = fixed_ids(m.config.vocab_size, 2, 48, 3).cuda()
    labels = ids.clone()
    labels[:, :32] = -100  # answer-only loss: the first 32 positions are the prompt
    loss = pm(input_ids=ids, labels=labels).loss
    loss.backward()
    res = {"ids": ids.int().cpu(), "labels": labels.int().cpu(), "loss": loss.detach().float().reshape(1).cpu()}
    for n, p in pm.named_parameters():
        if "lora_" in n:
            key = n.replace(".default", "")
            res[key] = p.detach().float().cpu()
            res[key + ".grad"] = p.grad.float().cpu()
    save_file({k: v.contiguous() for k, v in res.items()}, a.out)
    print(json.dumps({"out": a.out, "loss": loss.item(), "tensors": len(res)}))


def timed(fn, warm=1, reps=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


def bench_train(shape, r, batch=8, seq=512, steps=3):
    from peft import LoraConfig, get_peft_model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    m = build(shape, "bf16", 0)
    m.train()
    pm = get_peft_model(m, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=PROJ,
                                      task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4)
    ids = fixed_ids(m.config.vocab_size, batch, seq, 5).cuda()

    def step():
        loss = pm(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        t = timed(step, warm=1, reps=steps)
        res = {"tokens_per_s": batch * seq / t, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    except torch.OutOfMemoryError:
        res = {"tokens_per_s": 0.0, "peak_gib": None, "error": "out of memory"}
    del pm, m, opt
    torch.cuda.empty_cache()
    return res


@torch.no_grad()
def bench_prefill(shape, batch=8, seq=512):
    m = build(shape, "bf16", 0)
    ids = fixed_ids(m.config.vocab_size, batch, seq, 6).cuda()
    t = timed(lambda: m(input_ids=ids, use_cache=False, logits_to_keep=1), warm=2, reps=5)
    del m
    torch.cuda.empty_cache()
    return {"tokens_per_s": batch * seq / t}


@torch.no_grad()
def bench_generate(shape, n=256, prompt=1200, new=16, batches=(8, 16, 32, 64)):
    m = build(shape, "bf16", 0)
    g = torch.Generator().manual_seed(8)
    # MedSynth-like: lengths ~ 1,200 +- 300 tokens
    lens = (torch.randn(n, generator=g) * 300 + prompt).clamp(400, 2400).int().tolist()
    prompts = [fixed_ids(m.config.vocab_size, 1, L, 100 + i)[0] for i, L in enumerate(lens)]
    best = None
    rows = []
    for bs in batches:
        def run():
            for s in range(0, n, bs):
                chunk = prompts[s:s + bs]
                L = max(len(p) for p in chunk)
                ids = torch.zeros(len(chunk), L, dtype=torch.long)
                mask = torch.zeros(len(chunk), L, dtype=torch.long)
                for i, p in enumerate(chunk):  # left padding, as HF generate wants for decoder-only models
                    ids[i, L - len(p):] = p
                    mask[i, L - len(p):] = 1
                m.generate(input_ids=ids.cuda(), attention_mask=mask.cuda(), max_new_tokens=new,
                           min_new_tokens=new, do_sample=False, pad_token_id=0)
        try:
            t = timed(run, warm=0, reps=1)
            sps = n / t
        except torch.OutOfMemoryError:
            sps = 0.0
            torch.cuda.empty_cache()
        rows.append({"batch": bs, "samples_per_s": sps})
        if best is None or sps > best["samples_per_s"]:
            best = rows[-1]
    del m
    torch.cuda.empty_cache()
    return {"best": best, "all": rows}


@torch.no_grad()
def bench_decode(shape, prompt=256, new=64):
    m = build(shape, "bf16", 0)
    ids = fixed_ids(m.config.vocab_size, 1, prompt, 9).cuda()
    t = timed(lambda: m.generate(input_ids=ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                 pad_token_id=0), warm=1, reps=3)
    del m
    torch.cuda.empty_cache()
    return {"tokens_per_s_incl_prefill": new / t}


def cmd_bench(a):
    what = a.what.split(",")
    out = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "shape": a.shape}
    if "train" in what:
        out["train_r16"] = bench_train(a.shape, 16)
        out["train_r64"] = bench_train(a.shape, 64)
    if "prefill" in what:
        out["prefill"] = bench_prefill(a.shape)
    if "generate" in what:
        out["generate"] = bench_generate(a.shape)
    if "decode" in what:
        out["decode"] = bench_decode(a.shape)
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s = p.add_subparsers(dest="cmd", required=True)
    w = s.add_parser("weights")
    w.add_argument("--shape", choices=SHAPES, required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--dtype", default="bf16", choices=DT)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--layers", type=int)
    lg = s.add_parser("logits")
    lg.add_argument("--model", required=True)
    lg.add_argument("--out", required=True)
    lg.add_argument("--dtype", default="bf16", choices=DT)
    lg.add_argument("--batch", type=int, default=2)
    lg.add_argument("--prompt", type=int, default=64)
    lg.add_argument("--decode", type=int, default=4)
    gr = s.add_parser("lora-grad")
    gr.add_argument("--model", required=True)
    gr.add_argument("--out", required=True)
    gr.add_argument("--dtype", default="f32", choices=DT)
    gr.add_argument("--r", type=int, default=8)
    b = s.add_parser("bench")
    b.add_argument("--shape", choices=SHAPES, required=True)
    b.add_argument("--what", default="train,prefill,generate,decode")
    b.add_argument("--json")
    a = p.parse_args()
    {"weights": cmd_weights, "logits": cmd_logits, "lora-grad": cmd_lora_grad, "bench": cmd_bench}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
