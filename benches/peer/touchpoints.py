"""The peer of `suite peer`: DuckDB computes the touchpoint figures of a canonical NDJSON file.

Usage: python3 touchpoints.py FILE [THREADS]

Runs touchpoints.sql (next to this file) on FILE and prints one JSON object:
{"seconds": <wall time of connect + query + fetch>, "threads": n,
 "figures": {touchpoint: {figure: count}}}. The time leaves out starting Python and importing
duckdb, so it is DuckDB's own work.
"""

import json
import os
import sys
import time

try:
    import duckdb
except ImportError:
    sys.stderr.write(
        "the Python package `duckdb` is missing: python3 -m pip install duckdb "
        "(.ci/run installs it)\n"
    )
    sys.exit(3)


def main():
    path = sys.argv[1]
    sql_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "touchpoints.sql")
    sql = open(sql_file).read().replace("$path", path.replace("'", "''"))
    started = time.perf_counter()
    con = duckdb.connect()
    if len(sys.argv) > 2:
        con.execute(f"SET threads = {int(sys.argv[2])}")
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    rows = con.execute(sql).fetchall()
    seconds = time.perf_counter() - started
    figures = {}
    for touchpoint, figure, n in rows:
        figures.setdefault(touchpoint, {})[figure] = n
    print(json.dumps({"seconds": seconds, "threads": threads,
                      "duckdb": duckdb.__version__, "figures": figures}))


main()
