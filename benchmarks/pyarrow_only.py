"""Issue 14's I/O ceiling (benchmarks only): plain pyarrow, no Dask and no gpu_vgm.

    python benchmarks/pyarrow_only.py INPUT OUTPUT

A fresh process reads each Parquet file of INPUT with ``pq.read_table``, adds the two output
columns of every float column (x / 3 as ``<col>_normalized``, zeros as ``<col>_component``:
the same schema ``run`` writes) and writes it to OUTPUT with the writer settings of
``gpu_vgm.readers.write_part``, file after file, then deletes OUTPUT. This is "pyarrow read and
write of the same schema with the two new columns per float column", what a user without
gpu_vgm would write, and the ceiling issue 14 defines (its 15.1 s for 20 columns x 10M rows
is what this script takes there: 14.5-15.4 s on the same kind of machine). It imports neither
gpu_vgm (whose import loads scikit-learn's model code) nor Dask, so nothing but the read and the
write is timed.
"""

import os
import shutil
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def command(inp, out):
    """The pyarrow ceiling's command line."""
    return [sys.executable, __file__, str(inp), str(out)]


def with_output_columns(table):
    for name in list(table.column_names):
        if pa.types.is_floating(table.schema.field(name).type):
            x = table.column(name).to_numpy()
            table = table.append_column(f"{name}_normalized", pa.array(x * (1.0 / 3.0)))
            table = table.append_column(f"{name}_component", pa.array(np.zeros(x.size, np.int16)))
    return table


def main(argv):
    inp, out = argv
    os.makedirs(out)
    for name in sorted(os.listdir(inp)):
        if not name.endswith(".parquet"):
            continue
        table = with_output_columns(pq.read_table(os.path.join(inp, name)))
        pq.write_table(  # as gpu_vgm.readers.write_part writes a part
            table,
            os.path.join(out, name),
            compression="snappy",
            use_dictionary=[c for c in table.column_names if not c.endswith("_normalized")],
            row_group_size=max(table.num_rows, 1),
            write_page_checksum=True,
        )
    shutil.rmtree(out)


if __name__ == "__main__":
    main(sys.argv[1:])
