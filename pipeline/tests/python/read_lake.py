"""Reads a StockAnomaly `ticks` table with pyarrow, Polars and DuckDB and
prints every row (ordered by the tick key) per tool as JSON, so the Rust test
can compare them with DataFusion's rows exactly."""

import json
import math
import sys

import duckdb
import polars as pl
import pyarrow.dataset as ds

COLS = ["symbol", "ts", "seq", "price", "volume", "bid", "ask_size", "date"]


def clean(v):
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    return v


def rows(records):
    return [[clean(v) for v in r] for r in records]


def main(path):
    out = {}

    table = ds.dataset(path, format="parquet", partitioning="hive").to_table()
    table = table.sort_by([("symbol", "ascending"), ("ts", "ascending"), ("seq", "ascending")])
    d = table.to_pydict()
    ts = table.column("ts").cast("int64").to_pylist()
    out["pyarrow"] = rows(
        [d["symbol"][i], ts[i], d["seq"][i], d["price"][i], d["volume"][i], d["bid"][i], d["ask_size"][i], str(d["date"][i])]
        for i in range(table.num_rows)
    )

    df = (
        pl.scan_parquet(f"{path}/**/*.parquet", hive_partitioning=True)
        .with_columns(pl.col("ts").dt.epoch("us").alias("ts"), pl.col("date").cast(pl.Utf8))
        .sort(["symbol", "ts", "seq"])
        .select(COLS)
        .collect()
    )
    out["polars"] = rows(df.rows())

    con = duckdb.connect()
    q = f"""
        SELECT symbol, epoch_us(ts), seq, price, volume, bid, ask_size, CAST(date AS VARCHAR)
        FROM read_parquet('{path}/**/*.parquet', hive_partitioning = true)
        ORDER BY symbol, ts, seq
    """
    out["duckdb"] = rows(con.execute(q).fetchall())

    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
