"""Local processes vs Ray (local mode) for `prepare` on the built-in sample, same run.

    python benchmarks/bench_executors.py [--copies 3]

Both produce byte-identical output (tests/test_scaleout.py); this measures what Ray's
start-up and task dispatch cost on a small job. Ray's own start (``ray.init``) is timed
separately from the run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from longmix.cli import sample_corpus_dir
from longmix.data.executor import default_workers
from longmix.data.mixture import MixtureConfig
from longmix.data.prepare import PrepareConfig, prepare


def timed(corpus: Path, out: Path, executor: str) -> float:
    config = PrepareConfig(
        inputs=(str(corpus),),
        out=str(out),
        seq_len=8192,
        executor=executor,
        workers=default_workers(),
        mixture=MixtureConfig("per-source"),
    )
    start = time.perf_counter()
    prepare(config, progress=False, log=lambda m: None)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=3)
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        for copy in range(args.copies):
            shutil.copytree(sample_corpus_dir(), corpus / f"copy{copy}")
        local = timed(corpus, Path(tmp) / "local", "local")
        start = time.perf_counter()
        ray.init(num_cpus=default_workers(), include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - start
        on_ray = timed(corpus, Path(tmp) / "ray", "ray")
        ray.shutdown()
    result = {
        "cores": default_workers(),
        "copies": args.copies,
        "local_s": local,
        "ray_init_s": ray_start,
        "ray_run_s": on_ray,
        "ratio_ray_over_local": on_ray / local,
        "ratio_including_init": (on_ray + ray_start) / local,
        "ray": ray.__version__,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
