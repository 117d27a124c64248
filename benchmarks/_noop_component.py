"""A chain of no-op lightweight KFP components for bench_pipeline.py (kept out of modules that use
``from __future__ import annotations``: KFP reads the real annotation objects)."""
from kfp import dsl


@dsl.component(base_image="ensemw2s-bench-noop", install_kfp_package=False)
def noop(x: int) -> int:
    return x + 1


def chain_pipeline(n: int):
    @dsl.pipeline(name="noop-chain")
    def chain(start: int = 0):
        t = noop(x=start)
        for _ in range(n - 1):
            t = noop(x=t.output)

    return chain
