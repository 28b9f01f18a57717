"""prime's digits MLP as a Flower app (benchmark peer; see benchmarks/flower_compare.py)."""
