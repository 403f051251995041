"""Progress of a job's parts (a bar on a terminal, log lines elsewhere) and gathering results
in submission order."""

import logging
import sys
import time

log = logging.getLogger("gpu_vgm")
PROGRESS_INTERVAL = 10.0  # seconds between progress lines where no terminal shows a bar


class LogProgress:
    """Progress as log lines, at most one per ``interval`` seconds, where stderr is not a
    terminal (container logs, CI, a file): a billion-row job is otherwise silent for a minute.
    """

    def __init__(self, total, desc, interval):
        self.total, self.desc, self.interval = total, desc, interval
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, n=1):
        self.done += n
        now = time.monotonic()
        if self.done < self.total and now - self.last >= self.interval:
            self.last = now
            log.info(
                "%s: %d of %d parts (%.0f%%) in %.0f s",
                self.desc,
                self.done,
                self.total,
                100 * self.done / self.total,
                now - self.start,
            )

    def close(self):
        pass


def progress_factory(quiet):
    """A tqdm bar on a terminal, log lines otherwise (``LogProgress``), nothing if ``quiet``."""
    if quiet:
        return None
    if not sys.stderr.isatty():
        return lambda total, desc: LogProgress(total, desc, PROGRESS_INTERVAL)
    from tqdm import tqdm

    return lambda total, desc: tqdm(total=total, desc=desc, unit="part", file=sys.stderr)


def gather_parts(client, futures, total, progress, what, on_result=None):
    """The part results of ``futures`` (each a list of them), in submission order; on the
    first error cancel the rest and raise it. ``on_result(result)`` is called for each part
    as it arrives (checkpoints); ``total`` parts make the progress bar."""
    from distributed import as_completed

    results = [None] * len(futures)
    position = {f.key: i for i, f in enumerate(futures)}
    bar = progress(total=total, desc=what) if progress else None
    try:
        for fut in as_completed(futures):
            parts = fut.result()
            results[position[fut.key]] = parts
            for part in parts:
                if on_result:
                    on_result(part)
                if bar:
                    bar.update(1)
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        if bar:
            bar.close()
    return [part for parts in results for part in parts]
