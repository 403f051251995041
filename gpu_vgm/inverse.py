"""``python -m gpu_vgm.inverse``: restore the original columns from an encoded directory.

Example:
    python -m gpu_vgm.inverse --input data/transformed_data_1b/ --output data/restored/
"""

import argparse
import logging

from gpu_vgm import cli

log = logging.getLogger("gpu_vgm")


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m gpu_vgm.inverse",
        description="Decode gpu_vgm output back to the original columns.",
    )
    p.add_argument("--input", required=True, help="an encoded directory (e.g. --input data/out/)")
    p.add_argument("--output", required=True, help="where to write (e.g. --output data/back/)")
    p.add_argument(
        "--model",
        default=None,
        help="model file (default: INPUT/_model.json; e.g. --model model.json)",
    )
    p.add_argument(
        "--workers", type=cli.int_at_least(1), default=None, help="CPU cores to use (e.g. 2)"
    )
    p.add_argument("--scheduler-address", default=None, help="join an existing Dask cluster")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    cli.add_verbosity(p)
    return p


def _run(args):
    from gpu_vgm.cluster import dask_client
    from gpu_vgm.decode_job import decode_job
    from gpu_vgm.progress import progress_factory

    with dask_client(
        "cpu", workers=args.workers, scheduler_address=args.scheduler_address
    ) as client:
        result = decode_job(
            client,
            args.input,
            args.output,
            args.model,
            args.overwrite,
            progress_factory(args.quiet),
        )
    log.info("decoded %d rows in %.1f s into %s", result["rows"], result["seconds"], args.output)
    return 0


def main(argv=None):
    return cli.run_command(build_parser(), _run, argv)


if __name__ == "__main__":
    cli.run_main(main)
