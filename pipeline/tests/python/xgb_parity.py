"""Python's xgboost against StockAnomaly's models, both ways.

    xgb_parity.py predict LAKE FEATURE_SET MODEL_DIR DATE_FROM DATE_TO
        Loads MODEL_DIR/model.json (written by `stockanomaly train`) with
        Python's xgboost, predicts the feature rows of the dates with
        iteration_range=(0, best_iteration + 1) from the manifest, and
        compares with the `scores` rows `stockanomaly score` wrote for the
        model's version; then loads it as a scikit-learn `XGBClassifier`
        user would, without an iteration_range (the model's
        `best_iteration` attribute picks the rounds), and compares again.
        Prints a JSON summary; exits 1 when a row is missing or a score
        differs.

    xgb_parity.py train LAKE FEATURE_SET RUST_MODEL_DIR OUT_DIR
        Trains a model in Python (xgboost.train) on the same feature rows
        (label: |price_z_30m| > 2, any deterministic label will do), saves
        OUT_DIR/model.json and a manifest (the Rust model's, with this
        model's rounds and threshold 0.5), and writes OUT_DIR/py_scores.json:
        the key and Python's prediction of every row, for the Rust test to
        compare with `stockanomaly score --model OUT_DIR`.
"""

import hashlib
import json
import sys

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import xgboost as xgb

KEY = ["symbol", "ts", "seq"]


def features(lake, feature_set, names, date_from=None, date_to=None):
    data = ds.dataset(f"{lake}/features/{feature_set}", format="parquet", partitioning="hive")
    flt = None
    if date_from is not None:
        flt = (pc.field("date") >= date_from) & (pc.field("date") <= date_to)
    table = data.to_table(filter=flt).sort_by([(k, "ascending") for k in KEY])
    x = np.column_stack(
        [table.column(n).to_numpy(zero_copy_only=False).astype(np.float64) for n in names]
    )
    keys = list(
        zip(
            table.column("symbol").to_pylist(),
            table.column("ts").cast("int64").to_pylist(),
            table.column("seq").to_pylist(),
        )
    )
    return table, x, keys


def version_of(model_dir):
    with open(f"{model_dir}/model.json", "rb") as f:
        return "xgb-" + hashlib.sha256(f.read()).hexdigest()[:12]


def predict(lake, feature_set, model_dir, date_from, date_to):
    manifest = json.load(open(f"{model_dir}/manifest.json"))
    names = manifest["features"]
    _, x, keys = features(lake, feature_set, names, date_from, date_to)
    booster = xgb.Booster()
    booster.load_model(f"{model_dir}/model.json")
    assert booster.feature_names == names, (booster.feature_names, names)
    best = manifest["best_iteration"]
    ours = booster.inplace_predict(x, iteration_range=(0, best + 1))
    via_dmatrix = booster.predict(
        xgb.DMatrix(x, feature_names=names), iteration_range=(0, best + 1)
    )

    version = version_of(model_dir)
    scores = ds.dataset(
        f"{lake}/scores/model_version={version}", format="parquet", partitioning="hive"
    ).to_table(
        filter=(pc.field("date") >= date_from) & (pc.field("date") <= date_to)
    )
    rust = dict(
        zip(
            zip(
                scores.column("symbol").to_pylist(),
                scores.column("ts").cast("int64").to_pylist(),
                scores.column("seq").to_pylist(),
            ),
            scores.column("score").to_pylist(),
        )
    )
    missing = [k for k in keys if k not in rust]
    diffs = [abs(float(p) - rust[k]) for k, p in zip(keys, ours) if k in rust]
    diffs_dm = [abs(float(p) - float(q)) for p, q in zip(ours, via_dmatrix)]

    # A scikit-learn user: no iteration_range, the attributes decide.
    from xgboost import XGBClassifier

    clf = XGBClassifier()
    clf.load_model(f"{model_dir}/model.json")
    by_sklearn = clf.predict_proba(x)[:, 1]
    diffs_sk = [abs(float(p) - rust[k]) for k, p in zip(keys, by_sklearn) if k in rust]
    every_tree = booster.inplace_predict(x, iteration_range=(0, 0))
    summary = {
        "rows": len(keys),
        "rust_rows": len(rust),
        "missing": len(missing),
        "max_abs_diff": max(diffs) if diffs else None,
        "max_abs_diff_dmatrix": max(diffs_dm) if diffs_dm else None,
        "max_abs_diff_sklearn": max(diffs_sk) if diffs_sk else None,
        "best_iteration_attr": booster.attr("best_iteration"),
        "best_score_attr": booster.attr("best_score"),
        "sklearn_best_iteration": int(clf.best_iteration),
        "every_tree_differs": bool(np.any(every_tree != by_sklearn)),
        "version": version,
        "mean_score": float(np.mean(ours)) if len(ours) else None,
    }
    print(json.dumps(summary))
    ok = (
        len(keys) > 0
        and not missing
        and len(rust) == len(keys)
        and summary["max_abs_diff"] == 0.0
        and summary["max_abs_diff_sklearn"] == 0.0
    )
    sys.exit(0 if ok else 1)


def train(lake, feature_set, rust_model_dir, out_dir):
    import os

    manifest = json.load(open(f"{rust_model_dir}/manifest.json"))
    names = manifest["features"]
    _, x, keys = features(lake, feature_set, names)
    z = np.nan_to_num(x[:, names.index("price_z_30m")], nan=0.0)
    y = (np.abs(z) > 2).astype(np.float32)
    rounds = 12
    params = {
        "objective": "binary:logistic",
        "tree_method": "hist",
        "max_depth": 4,
        "eta": 0.3,
        "seed": 7,
    }
    booster = xgb.train(params, xgb.DMatrix(x, label=y, feature_names=names), rounds)
    os.makedirs(out_dir, exist_ok=True)
    booster.save_model(f"{out_dir}/model.json")
    manifest["best_iteration"] = rounds - 1
    manifest["rounds_trained"] = rounds
    manifest["threshold"] = 0.5
    manifest["version"] = version_of(out_dir)
    manifest["params"] = {k: str(v) for k, v in params.items()}
    with open(f"{out_dir}/manifest.json", "w") as f:
        json.dump(manifest, f, indent=2)
    preds = booster.inplace_predict(x)
    with open(f"{out_dir}/py_scores.json", "w") as f:
        json.dump(
            {
                "version": manifest["version"],
                "rows": [[k[0], k[1], k[2], float(p)] for k, p in zip(keys, preds)],
            },
            f,
        )
    print(json.dumps({"rows": len(keys), "positives": int(y.sum()), "version": manifest["version"]}))


def main(argv):
    if len(argv) == 6 and argv[0] == "predict":
        predict(*argv[1:])
    elif len(argv) == 5 and argv[0] == "train":
        train(*argv[1:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
