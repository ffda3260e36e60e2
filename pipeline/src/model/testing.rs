//! Trained models for the tests of the compiled trees and explainer.

use arrow::array::Float64Array;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::xgb::{Booster, DMatrix};

/// Rows of eight features, NULLs in two, a label that needs interactions and
/// repeated splits on a feature along a path.
pub(crate) fn data(rows: usize, seed: u64) -> (Vec<Float64Array>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cols: Vec<Vec<Option<f64>>> = (0..8).map(|_| Vec::with_capacity(rows)).collect();
    let mut label = Vec::with_capacity(rows);
    for i in 0..rows {
        let x: Vec<f64> = (0..8).map(|_| rng.random::<f64>() * 4.0 - 2.0).collect();
        let y = (x[0] * x[1] > 0.3) as u8 as f64
            + (x[2].abs() < 0.5) as u8 as f64
            + 0.5 * x[3].sin()
            + if i % 5 == 0 { 0.0 } else { 0.3 * x[4] }
            + rng.random::<f64>() * 0.8;
        label.push(if y > 1.0 { 1.0 } else { 0.0 });
        for (j, c) in cols.iter_mut().enumerate() {
            let missing = (j == 4 && i % 5 == 0) || (j == 6 && i % 3 == 0);
            c.push((!missing).then_some(x[j]));
        }
    }
    (cols.into_iter().map(Float64Array::from).collect(), label)
}

pub(crate) fn trained(cols: &[Float64Array], label: &[f32], depth: &str, rounds: u32) -> Booster {
    let refs: Vec<&Float64Array> = cols.iter().collect();
    let m = DMatrix::from_columns(&refs, Some(label), None).unwrap();
    let mut b = Booster::new(&[&m]).unwrap();
    for (k, v) in [
        ("objective", "binary:logistic"),
        ("tree_method", "hist"),
        ("seed", "3"),
        ("max_depth", depth),
        ("eta", "0.2"),
    ] {
        b.set_param(k, v).unwrap();
    }
    for r in 0..rounds {
        b.update(r, &m).unwrap();
    }
    b
}
