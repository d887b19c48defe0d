"""The three peers the benches compare (see bench/README.md)."""
