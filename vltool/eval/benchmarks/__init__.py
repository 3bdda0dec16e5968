"""The benchmarks ``vltool eval`` runs, by ``--benchmark`` name."""

from vltool.eval.benchmarks import custom, gqa, mme, pope, refcoco, scienceqa, seed, textvqa
from vltool.eval.benchmarks.base import Benchmark

BENCHMARKS: dict[str, Benchmark] = {
    module.BENCHMARK.name: module.BENCHMARK for module in (mme, pope, seed, scienceqa, textvqa, gqa, refcoco, custom)
}
