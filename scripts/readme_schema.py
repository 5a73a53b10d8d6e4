"""Regenerate the README's Parquet schema table (and its version heading) from analysis/schema.py."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.schema import SCHEMA_VERSION, schema_markdown  # noqa: E402

readme = ROOT / "README.md"
text = readme.read_text()
text = re.sub(r"## Parquet schema \(version [0-9.]+\)", f"## Parquet schema (version {SCHEMA_VERSION})", text)
start = text.index("| column | type | meaning |")
end = start
lines = text[start:].splitlines(keepends=True)
n = 0
for line in lines:
    if not line.startswith("|"):
        break
    n += len(line)
text = text[:start] + schema_markdown() + "\n" + text[start + n:]
readme.write_text(text)
print(f"README schema table: version {SCHEMA_VERSION}")
