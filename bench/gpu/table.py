#!/usr/bin/env python3
"""Markdown tables from the JSON that bench/gpu/run.sh collects (gpucheck reports and torch_ref.py
bench output): logits parity, LoRA gradients, throughput with ours/PyTorch ratios, 4-bit loading and
the memory trace, under a heading naming the card, the date and the commit (bench/RESULTS.md format).

  table.py --json-dir DIR [--commit SHA] [--out table.md] [--combined all.json] [--append bench/RESULTS.md]

Standard library only (runs on the GPU machine and here).
"""
import argparse
import datetime
import glob
import json
import os
import subprocess
import sys


def load_dir(d):
    out = {}
    for path in sorted(glob.glob(os.path.join(d, "*.json"))):
        name = os.path.basename(path)[:-5]
        try:
            with open(path) as f:
                out[name] = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            print(f"table.py: skipping {path}: {e}", file=sys.stderr)
    return out


def fmt(x, digits=3):
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "**no**"
    if isinstance(x, (int, float)):
        if x == 0:
            return "0"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if abs(x) >= 1:
            return f"{x:.{digits}g}" if abs(x) < 100 else f"{x:.0f}"
        return f"{x:.2e}" if abs(x) < 1e-2 else f"{x:.{digits}f}"
    return str(x)


def table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def card_of(data):
    for v in data.values():
        c = isinstance(v, dict) and v.get("card")
        if c and c != "cpu":
            return c
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown card"


def parity(data):
    rows = []
    for name, r in data.items():
        if not name.startswith("parity-"):
            continue
        checks = r.get("checks", [])
        pre = next((c for c in checks if c["check"] == "prefill_last"), None)
        dec = [c for c in checks if c["check"].startswith("decode_")]
        worst = max((c["rel_err"] for c in dec), default=None)
        agree = min((c.get("argmax_agree", 1.0) for c in checks), default=None)
        rows.append([os.path.basename(r.get("model", name)), r.get("dtype"),
                     pre and pre["rel_err"], worst, max((c["max_abs_diff"] for c in checks), default=None),
                     agree, checks[0]["tol"] if checks else None, "PASS" if r.get("pass") else "**FAIL**"])
    if not rows:
        return None
    return "### Logits parity (ours vs PyTorch sdpa; relative error ‖ours−ref‖/‖ref‖)\n\n" + table(
        ["model", "dtype", "prefill", "worst decode step", "max abs diff", "min argmax agreement", "tol",
         "result"], rows)


def lora(data):
    rows = []
    for name, r in data.items():
        if not name.startswith("lora-"):
            continue
        for label, loss in r.get("loss_ours", []):
            cs = [c for c in r["checks"] if c["check"].startswith(label + ":") and c["check"].endswith(".grad")]
            worst = max(cs, key=lambda c: c["rel_err"], default=None)
            rows.append([os.path.basename(r["model"]), label, r["r"], f"{loss:.6f}", f"{r['loss_ref']:.6f}",
                         worst and worst["rel_err"], worst and worst["check"].split(":", 1)[1].replace(
                             "base_model.model.model.", ""),
                         "PASS" if all(c["pass"] for c in r["checks"] if c["check"].startswith(label + ":"))
                         else "**FAIL**"])
    if not rows:
        return None
    return "### LoRA loss and gradients (ours vs peft, f32, all seven projections)\n\n" + table(
        ["model", "backward", "r", "loss ours", "loss peft", "worst grad rel err", "worst tensor", "result"], rows)


def ratio(ours, theirs):
    if isinstance(ours, (int, float)) and isinstance(theirs, (int, float)) and theirs:
        return ours / theirs
    return None


def bench(data):
    rows = []
    shapes = sorted({n.split("-", 2)[2] for n in data if n.startswith(("bench-ours-", "bench-torch-"))})
    for s in shapes:
        o, t = data.get(f"bench-ours-{s}", {}), data.get(f"bench-torch-{s}", {})
        keys = sorted({k for k in list(o) + list(t) if k.startswith("train_r")}, key=lambda k: int(k[7:]))
        for k in keys:
            oo, tt = o.get(k, {}), t.get(k, {})
            note = "; ".join(x for x in [oo.get("error") and f"ours: {oo['error']}",
                                         tt.get("error") and f"torch: {tt['error']}"] if x)
            rows.append([s, f"{k} tokens/s", tt.get("tokens_per_s"), oo.get("tokens_per_s"),
                         ratio(oo.get("tokens_per_s"), tt.get("tokens_per_s")), note or f"ours: {o.get('train_backward', '')} backward"])
            rows.append([s, f"{k} peak GiB", tt.get("peak_gib"), oo.get("peak_gib"),
                         ratio(oo.get("peak_gib"), tt.get("peak_gib")), "ours: NVML used over pre-load; torch: max allocated"])
        if "prefill" in o or "prefill" in t:
            a, b = o.get("prefill", {}), t.get("prefill", {})
            rows.append([s, "prefill tokens/s (b8×512)", b.get("tokens_per_s"), a.get("tokens_per_s"),
                         ratio(a.get("tokens_per_s"), b.get("tokens_per_s")), ""])
        if "generate" in o or "generate" in t:
            a, b = (o.get("generate") or {}).get("best") or {}, (t.get("generate") or {}).get("best") or {}
            rows.append([s, "generate samples/s (256 × ~1,200 tok, 16 new)", b.get("samples_per_s"),
                         a.get("samples_per_s"), ratio(a.get("samples_per_s"), b.get("samples_per_s")),
                         f"best batch: torch {b.get('batch')}, ours {a.get('batch')}"])
        if "decode" in o or "decode" in t:
            a, b = o.get("decode", {}), t.get("decode", {})
            rows.append([s, "decode tokens/s (b1, 256 + 64)", b.get("tokens_per_s_incl_prefill"),
                         a.get("tokens_per_s_incl_prefill"),
                         ratio(a.get("tokens_per_s_incl_prefill"), b.get("tokens_per_s_incl_prefill")),
                         "incl. prefill"])
    if not rows:
        return None
    return "### Throughput (random bf16 weights; median of 3 after warm-up)\n\n" + table(
        ["shape", "measure", "PyTorch", "ours", "ours / PyTorch", "note"], rows)


def quant(data):
    parts = []
    for name, r in data.items():
        if not name.startswith("quant-"):
            continue
        a = r.get("agreement", {})
        rows = [
            ["dense load (s)", r["dense"]["load_s"]],
            [f"dense peak MiB ({r.get('dtype')})", r["dense"]["peak_mib"]],
            [f"{r['qtype']} cold load: quantise + write cache (s)", r["quant_cold"]["load_s"]],
            [f"{r['qtype']} cached load (s)", r["quant_cached"]["load_s"]],
            [f"{r['qtype']} peak MiB (cold / cached)", f"{fmt(r['quant_cold']['peak_mib'])} / {fmt(r['quant_cached']['peak_mib'])}"],
            ["cache file MiB", r.get("cache_file_mib")],
            ["logits rel err 4-bit vs dense", a.get("rel_err")],
            ["argmax agreement 4-bit vs dense", a.get("argmax_agree")],
            ["cached load = cold load", r.get("cached_equals_cold")],
            ["MiB left after drop (dense / cold / cached)",
             " / ".join(fmt(r[k]["after_drop_mib"]) for k in ("dense", "quant_cold", "quant_cached"))],
        ]
        parts.append(f"### 4-bit loading ({os.path.basename(r['model'])})\n\n" + table(["measure", "value"], rows))
    return "\n\n".join(parts) or None


def memtrace(data):
    r = data.get("memtrace")
    if not r:
        return None
    rows = [[s["step"] if s["step"] else "0 (warm-up)", s["kind"], os.path.basename(s["model"]), s["before_mib"],
             s["peak_mib"], s["after_mib"], s["returned"] if s["step"] else "–", s["seconds"]] for s in r["steps"]]
    text = f"### Memory trace, one process (returned = after within ±{fmt(r['tolerance_mib'])} MiB of before)\n\n"
    text += table(["step", "task", "model", "before MiB", "peak MiB", "after MiB", "returned", "s"], rows)
    text += ("\n\nStep 0 runs the first task once more as a warm-up: what it leaves is the process's one-time CUDA "
             "state (cuBLAS handles and workspace, kernel modules), not a model's memory.")
    text += f"\n\nDrift over the six tasks (after the last − before step 1): {fmt(r.get('drift_mib'))} MiB."
    if not r.get("all_returned"):
        text += ("\n\nMemory did not return after every task: candle's CUDA allocator may keep freed memory; "
                 "the fallback is one process per task (single-box mode).")
    return text


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json-dir", required=True)
    p.add_argument("--commit", default="unknown")
    p.add_argument("--card")
    p.add_argument("--date", default=datetime.date.today().isoformat())
    p.add_argument("--out")
    p.add_argument("--combined", help="also write every input JSON into one file, keyed by file name")
    p.add_argument("--append", help="append the markdown to this file (bench/RESULTS.md)")
    a = p.parse_args()
    data = load_dir(a.json_dir)
    card = a.card or card_of(data)
    sections = [s for s in (parity(data), lora(data), bench(data), quant(data), memtrace(data)) if s]
    md = f"## GPU checks — {card}, {a.date}, commit {a.commit}\n\n"
    md += "\n\n".join(sections) if sections else "(no results)"
    md += "\n"
    print(md)
    if a.out:
        with open(a.out, "w") as f:
            f.write(md)
    if a.combined:
        with open(a.combined, "w") as f:
            json.dump(data, f, indent=1)
    if a.append:
        with open(a.append, "a") as f:
            f.write("\n" + md)


if __name__ == "__main__":
    sys.exit(main())
