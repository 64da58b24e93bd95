"""Trim a `batchd advise --json` answer into the test fixture.

    batchd advise examples/jobs/mlp-synthetic.toml --json > full.json
    python3 trim.py full.json > recommendation.json

Drops evidence.trials and keeps the first 16 points of every per-step loss
curve (evidence.lr_confirmations[*].losses, evidence.race.entries[*].runs[*].losses):
the full answer is 1.8 MB, the fixture ~20 KB. Every other field is as batchd wrote it.
"""
import json
import sys

KEEP = 16

with open(sys.argv[1], encoding="utf-8") as f:
    data = json.load(f)
evidence = data["evidence"]
evidence.pop("trials", None)
for confirmation in evidence.get("lr_confirmations") or []:
    confirmation["losses"] = confirmation["losses"][:KEEP]
for entry in (evidence.get("race") or {}).get("entries") or []:
    for run in entry.get("runs") or []:
        run["losses"] = run["losses"][:KEEP]
json.dump(data, sys.stdout, indent=1)
sys.stdout.write("\n")
