"""Python's xgboost on the matrix `stockanomaly bench --xgboost LAKE --export
FILE` wrote: the same rows, columns, labels and parameters, the same number of
rounds. Prints XGB_PY_* lines for scripts/bench.sh.

    bench-xgboost.py FILE.parquet ROUNDS
"""

import json
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import xgboost as xgb


def main(path, rounds):
    rounds = int(rounds)
    params = json.load(open(path.rsplit(".", 1)[0] + ".params.json"))
    table = pq.read_table(path)
    names = [n for n in table.column_names if n != "label"]
    x = np.column_stack(
        [table.column(n).to_numpy(zero_copy_only=False).astype(np.float64) for n in names]
    )
    y = table.column("label").to_numpy()

    started = time.perf_counter()
    dtrain = xgb.DMatrix(x, label=y, feature_names=names)
    build = time.perf_counter() - started

    started = time.perf_counter()
    booster = xgb.train(params, dtrain, rounds)
    train = time.perf_counter() - started

    started = time.perf_counter()
    scores = booster.inplace_predict(x)
    predict = time.perf_counter() - started

    print(f"xgboost {xgb.__version__}: {len(y)} rows x {len(names)} features, {rounds} rounds", file=sys.stderr)
    print(f"XGB_PY_DMATRIX_SECS={build:.4f}")
    print(f"XGB_PY_TRAIN_SECS={train:.4f}")
    print(f"XGB_PY_PREDICT_ROWS_PER_SEC={len(y) / max(predict, 1e-9):.1f}")
    print(f"XGB_PY_MEAN_SCORE={float(np.mean(scores.astype(np.float64))):.9f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
