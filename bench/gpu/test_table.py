#!/usr/bin/env python3
"""Tests of table.py (standard library only): `python3 -m unittest bench/gpu/test_table.py`."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import table  # noqa: E402


def check(name, rel, tol=0.02, agree=1.0):
    return {"check": name, "rel_err": rel, "max_abs_diff": rel * 2, "argmax_agree": agree, "tol": tol,
            "pass": rel <= tol}


class TableTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.j = self.dir.name

    def tearDown(self):
        self.dir.cleanup()

    def put(self, name, obj):
        with open(os.path.join(self.j, name + ".json"), "w") as f:
            json.dump(obj, f)

    def test_ratios_are_ours_over_torch_and_oom_is_noted(self):
        self.put("bench-torch-llama3b", {"card": "NVIDIA H100", "train_r16": {"tokens_per_s": 10000.0, "peak_gib": 30.0},
                                         "train_r64": {"tokens_per_s": 0.0, "peak_gib": None, "error": "out of memory"},
                                         "prefill": {"tokens_per_s": 60000.0}})
        self.put("bench-ours-llama3b", {"card": "NVIDIA H100", "train_backward": "recompute",
                                        "train_r16": {"tokens_per_s": 5000.0, "peak_gib": 15.0},
                                        "train_r64": {"tokens_per_s": 4000.0, "peak_gib": 16.0},
                                        "prefill": {"tokens_per_s": 30000.0}})
        md = table.bench(table.load_dir(self.j))
        row = next(line for line in md.splitlines() if "train_r16 tokens/s" in line)
        self.assertIn("| 0.500 |", row)
        row = next(line for line in md.splitlines() if "prefill" in line)
        self.assertIn("| 0.500 |", row)
        row = next(line for line in md.splitlines() if "train_r64 tokens/s" in line)
        self.assertIn("torch: out of memory", row)
        self.assertIn("| – |", row)  # no ratio against a run that did not happen

    def test_parity_fail_is_marked_and_worst_decode_step_shown(self):
        self.put("parity-llama3b-bf16", {"model": "/w/llama3b", "dtype": "bf16", "pass": False,
                                         "checks": [check("prefill_last", 0.004), check("decode_0", 0.03, agree=0.5)]})
        md = table.parity(table.load_dir(self.j))
        row = md.splitlines()[-1]
        self.assertIn("**FAIL**", row)
        self.assertIn("0.030", row)
        self.assertIn("0.500", row)

    def test_heading_names_card_date_and_commit_and_appends(self):
        self.put("bench-ours-llama8b", {"card": "NVIDIA H100 80GB HBM3", "decode": {"tokens_per_s_incl_prefill": 90.0}})
        results = os.path.join(self.j, "RESULTS.md")
        with open(results, "w") as f:
            f.write("# Results\n")
        subprocess.run([sys.executable, os.path.join(HERE, "table.py"), "--json-dir", self.j, "--commit", "abc123",
                        "--date", "2026-11-26", "--append", results], check=True, capture_output=True)
        text = open(results).read()
        self.assertTrue(text.startswith("# Results\n"))
        self.assertIn("## GPU checks — NVIDIA H100 80GB HBM3, 2026-11-26, commit abc123", text)
        self.assertIn("decode tokens/s", text)


if __name__ == "__main__":
    unittest.main()
