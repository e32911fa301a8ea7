"""actorcast benchmarks: `python bench/NAME.py --out DIR [--quick]` writes DIR/NAME.json (+ PNG plots)."""
