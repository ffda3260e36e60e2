//! A safe wrapper over XGBoost 3.4.1's C API, the only place the crate calls
//! into XGBoost (and so the only `unsafe` of the model stage).
//!
//! Why raw bindings and not a higher-level crate: see `../shared/TOOLING.md`
//! ("XGBoost"): `xgb` hides its handles and has no columnar input, `xgboost`
//! 0.1.4 is XGBoost 0.81, `xgboost-rs` drops `auc` when linked statically.
//!
//! Data goes in as Arrow columns: [`DMatrix::from_columns`] hands XGBoost a
//! JSON array interface per column pointing at the Arrow value buffer, with
//! the validity bitmap as the mask, so nothing is copied row by row on our
//! side (XGBoost copies once into its own sparse pages). A NULL is missing, and
//! so is a NaN value (`missing` is NaN).
//!
//! Every call returns [`XgbError::Xgboost`] with XGBoost's own message
//! (`XGBGetLastError`, read on the calling thread right after the call).
//!
//! # Example
//!
//! ```
//! use arrow::array::Float64Array;
//! use stockanomaly::model::xgb::{Booster, DMatrix};
//!
//! # fn main() -> Result<(), stockanomaly::model::XgbError> {
//! let x = Float64Array::from(vec![Some(0.1), Some(0.9), None, Some(0.8)]);
//! let train = DMatrix::from_columns(&[&x], Some(&[0.0, 1.0, 0.0, 1.0]), None)?;
//! let mut booster = Booster::new(&[&train])?;
//! booster.set_param("objective", "binary:logistic")?;
//! for round in 0..5 {
//!     booster.update(round, &train)?;
//! }
//! let scores = booster.predict(&train)?;
//! assert_eq!(scores.len(), 4);
//! # Ok(())
//! # }
//! ```

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr;

use arrow::array::{Array, Float64Array};
use arrow::buffer::Buffer;
use serde_json::json;
use xgboost_lib_sys as sys;

/// What can go wrong talking to XGBoost.
#[derive(Debug, thiserror::Error)]
pub enum XgbError {
    /// XGBoost refused the call; `message` is its own (`XGBGetLastError`).
    #[error("xgboost: {call} failed: {message}")]
    Xgboost { call: &'static str, message: String },
    /// Columns, labels or weights of different lengths.
    #[error("xgboost: {what} has {got} rows, the first column has {rows}")]
    LengthMismatch {
        what: String,
        got: usize,
        rows: usize,
    },
    /// A matrix needs at least one feature column.
    #[error("xgboost: a matrix needs at least one feature column")]
    NoColumns,
    /// A parameter, name or path holds a NUL byte, which C strings cannot carry.
    #[error("xgboost: {what} {value:?} contains a NUL byte")]
    Nul { what: &'static str, value: String },
    /// Reading or writing a model file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// XGBoost answered something this wrapper does not expect (our bug, or
    /// a library that is not 3.4.x).
    #[error("xgboost: {call}: unexpected output: {detail}")]
    Unexpected { call: &'static str, detail: String },
}

/// Result of this module.
pub type Result<T, E = XgbError> = std::result::Result<T, E>;

/// Turns an XGBoost return code into a `Result`, fetching the error message.
fn check(call: &'static str, rc: c_int) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: XGBGetLastError takes no argument and returns a pointer to a
    // NUL-terminated thread-local string (or NULL), valid until the next
    // XGBoost call on this thread; it is copied out at once.
    let msg = unsafe { sys::XGBGetLastError() };
    let message = if msg.is_null() {
        "no message".to_string()
    } else {
        // SAFETY: non-null, NUL-terminated, alive until the next call (above).
        unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .trim()
            .to_string()
    };
    Err(XgbError::Xgboost { call, message })
}

fn cstring(what: &'static str, value: &str) -> Result<CString> {
    CString::new(value).map_err(|_| XgbError::Nul {
        what,
        value: value.to_string(),
    })
}

/// JSON `__array_interface__` (version 3) of a 1-d buffer, as XGBoost reads it.
fn array_interface(ptr: *const u8, len: usize, typestr: &str) -> serde_json::Value {
    json!({
        "data": [ptr as usize, true],
        "shape": [len],
        "typestr": typestr,
        "strides": null,
        "version": 3,
    })
}

/// The JSON configuration of a prediction (`inplace` adds `missing`).
fn predict_config(kind: PredictKind, rounds: Option<(u32, u32)>, inplace: bool) -> Result<CString> {
    let (begin, end) = rounds.unwrap_or((0, 0));
    let config = json!({
        "type": kind.code(),
        "training": false,
        "iteration_begin": begin,
        "iteration_end": end,
        "strict_shape": false,
    });
    if inplace {
        // NaN is missing, as in a DMatrix made by `DMatrix::from_columns`;
        // `json!` cannot write NaN, so it goes in as text.
        return cstring(
            "config",
            &config.to_string().replacen('{', "{\"missing\": NaN, ", 1),
        );
    }
    cstring("config", &config.to_string())
}

/// Calls a prediction function with out-pointers for its shape and result
/// and copies the result out: the values row-major and the row width.
fn read_prediction(
    call: &'static str,
    f: impl FnOnce(*mut *const sys::bst_ulong, *mut sys::bst_ulong, *mut *const f32) -> c_int,
) -> Result<(Vec<f32>, usize)> {
    let mut shape: *const sys::bst_ulong = ptr::null();
    let mut dim: sys::bst_ulong = 0;
    let mut result: *const f32 = ptr::null();
    check(call, f(&mut shape, &mut dim, &mut result))?;
    if shape.is_null() || dim == 0 {
        return Err(XgbError::Unexpected {
            call,
            detail: format!("output of {dim} dimensions"),
        });
    }
    // SAFETY: XGBoost wrote `dim` extents at `shape`.
    let shape = unsafe { std::slice::from_raw_parts(shape, dim as usize) };
    let len: usize = shape.iter().map(|&s| s as usize).product();
    let width = if dim == 1 {
        1
    } else {
        shape[dim as usize - 1] as usize
    };
    if len == 0 {
        return Ok((Vec::new(), width));
    }
    if result.is_null() {
        return Err(XgbError::Unexpected {
            call,
            detail: "no result buffer".into(),
        });
    }
    // SAFETY: the result buffer holds the product of the shape's extents
    // of f32, owned by the booster and valid until its next call; copied
    // out here.
    let values = unsafe { std::slice::from_raw_parts(result, len) }.to_vec();
    Ok((values, width))
}

/// Equally long Arrow columns described as XGBoost's columnar
/// `__array_interface__` list: the value buffers and validity bitmaps as
/// they are (a bitmap is re-aligned only for an array sliced at an offset
/// that is not a multiple of 8). NULL and NaN are both missing.
struct Columnar {
    json: CString,
    rows: usize,
    /// Re-aligned bitmaps, alive as long as `json` points at them.
    _masks: Vec<Buffer>,
}

impl Columnar {
    fn new(columns: &[&Float64Array]) -> Result<Self> {
        let Some(first) = columns.first() else {
            return Err(XgbError::NoColumns);
        };
        let rows = first.len();
        let mut masks: Vec<Buffer> = Vec::with_capacity(columns.len());
        let mut interfaces = Vec::with_capacity(columns.len());
        for (i, column) in columns.iter().enumerate() {
            if column.len() != rows {
                return Err(XgbError::LengthMismatch {
                    what: format!("column {i}"),
                    got: column.len(),
                    rows,
                });
            }
            let values = column.values();
            let mut interface = array_interface(values.as_ptr().cast(), rows, "<f8");
            if let Some(nulls) = column.nulls().filter(|n| n.null_count() > 0) {
                // Arrow bitmaps are LSB-first like XGBoost's `RBitField8`;
                // `sliced` is zero-copy when the offset is byte-aligned.
                let mask = nulls.inner().sliced();
                let mut mask_interface = array_interface(mask.as_ptr(), rows, "<t1");
                mask_interface["mask"] = serde_json::Value::Null;
                interface["mask"] = mask_interface;
                masks.push(mask);
            } else {
                interface["mask"] = serde_json::Value::Null;
            }
            interfaces.push(interface);
        }
        Ok(Columnar {
            json: cstring("columns", &serde_json::Value::Array(interfaces).to_string())?,
            rows,
            _masks: masks,
        })
    }
}

/// Training or prediction data, owned by XGBoost (`DMatrixHandle`).
#[derive(Debug)]
pub struct DMatrix {
    handle: sys::DMatrixHandle,
}

// SAFETY: a DMatrix handle is a heap object not tied to the thread that made
// it; XGBoost's per-thread state (last error, output buffers) is only read on
// the calling thread right after each call. Not `Sync`: no concurrent calls.
unsafe impl Send for DMatrix {}

impl DMatrix {
    /// Builds a matrix from equally long Arrow columns (one feature each, in
    /// order), with optional labels and sample weights.
    ///
    /// The value buffers and validity bitmaps are passed to XGBoost as they
    /// are (a bitmap is re-aligned only for an array sliced at an offset that
    /// is not a multiple of 8). NULL and NaN are both missing.
    pub fn from_columns(
        columns: &[&Float64Array],
        label: Option<&[f32]>,
        weight: Option<&[f32]>,
    ) -> Result<DMatrix> {
        Self::from_columns_on(columns, label, weight, 0)
    }

    /// [`DMatrix::from_columns`] on `threads` threads (0: all cores). One
    /// thread for small matrices made often (a streaming step's alerts):
    /// each OpenMP team leaves its threads spinning for a while after it.
    pub fn from_columns_on(
        columns: &[&Float64Array],
        label: Option<&[f32]>,
        weight: Option<&[f32]>,
        threads: usize,
    ) -> Result<DMatrix> {
        let table = Columnar::new(columns)?;
        // `missing` NaN: a NaN value is missing like a NULL (the mask turns
        // NULLs into NaN inside XGBoost).
        let config = cstring(
            "config",
            &format!(r#"{{"missing": NaN, "nthread": {threads}}}"#),
        )?;
        let mut handle: sys::DMatrixHandle = ptr::null_mut();
        // SAFETY: `table.json` describes `columns.len()` live Arrow buffers
        // of `rows` f64 (8-byte aligned, as arrow guarantees) and their
        // bitmaps of at least `rows` bits (`table` or the arrays themselves
        // keep them alive); XGBoost reads them only during this call and
        // copies the values into its own pages. Both strings are
        // NUL-terminated; `handle` is written.
        check("XGDMatrixCreateFromColumnar", unsafe {
            sys::XGDMatrixCreateFromColumnar(table.json.as_ptr(), config.as_ptr(), &mut handle)
        })?;
        let rows = table.rows;
        drop(table);
        let matrix = DMatrix { handle };
        if let Some(label) = label {
            matrix.set_info("label", label, rows)?;
        }
        if let Some(weight) = weight {
            matrix.set_info("weight", weight, rows)?;
        }
        Ok(matrix)
    }

    fn set_info(&self, field: &'static str, values: &[f32], rows: usize) -> Result<()> {
        if values.len() != rows {
            return Err(XgbError::LengthMismatch {
                what: field.to_string(),
                got: values.len(),
                rows,
            });
        }
        let interface = array_interface(values.as_ptr().cast(), values.len(), "<f4").to_string();
        let interface = cstring("array interface", &interface)?;
        let field = cstring("field", field)?;
        // SAFETY: `self.handle` is a live DMatrix; the interface points at
        // `values` (f32, aligned, `rows` long), which XGBoost copies during
        // the call; the strings are NUL-terminated.
        check("XGDMatrixSetInfoFromInterface", unsafe {
            sys::XGDMatrixSetInfoFromInterface(self.handle, field.as_ptr(), interface.as_ptr())
        })
    }

    /// Names the feature columns, in order; a booster trained on this matrix
    /// keeps them (and writes them into its JSON model).
    pub fn set_feature_names(&mut self, names: &[&str]) -> Result<()> {
        let owned = names
            .iter()
            .map(|n| cstring("feature name", n))
            .collect::<Result<Vec<_>>>()?;
        let mut ptrs: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
        let field = cstring("field", "feature_name")?;
        // SAFETY: live handle; `ptrs` holds `names.len()` NUL-terminated
        // strings kept alive by `owned`; XGBoost copies them.
        check("XGDMatrixSetStrFeatureInfo", unsafe {
            sys::XGDMatrixSetStrFeatureInfo(
                self.handle,
                field.as_ptr(),
                ptrs.as_mut_ptr(),
                ptrs.len() as sys::bst_ulong,
            )
        })
    }

    /// Number of rows.
    pub fn num_rows(&self) -> Result<usize> {
        let mut out: sys::bst_ulong = 0;
        // SAFETY: live handle; `out` is written.
        check("XGDMatrixNumRow", unsafe {
            sys::XGDMatrixNumRow(self.handle, &mut out)
        })?;
        Ok(out as usize)
    }

    /// Number of feature columns.
    pub fn num_cols(&self) -> Result<usize> {
        let mut out: sys::bst_ulong = 0;
        // SAFETY: live handle; `out` is written.
        check("XGDMatrixNumCol", unsafe {
            sys::XGDMatrixNumCol(self.handle, &mut out)
        })?;
        Ok(out as usize)
    }
}

impl Drop for DMatrix {
    fn drop(&mut self) {
        // SAFETY: the handle came from XGDMatrixCreateFromColumnar and is
        // freed once; boosters that cached it hold their own reference.
        unsafe {
            sys::XGDMatrixFree(self.handle);
        }
    }
}

/// What [`Booster::predict_with`] returns per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictKind {
    /// The objective's output (probabilities for `binary:logistic`).
    Value,
    /// The raw score before the link function (log-odds).
    Margin,
    /// SHAP contributions: one per feature, then the bias.
    Contribs,
}

impl PredictKind {
    fn code(self) -> u8 {
        match self {
            PredictKind::Value => 0,
            PredictKind::Margin => 1,
            PredictKind::Contribs => 2,
        }
    }
}

/// One `data-metric:value` of an evaluation line.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalMetric {
    /// The name the matrix was given in [`Booster::eval`].
    pub data: String,
    /// `auc`, `aucpr`, `logloss`, ...
    pub metric: String,
    pub value: f64,
}

/// Importance of one feature.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureScore {
    /// The matrix's feature name, or `f0`, `f1`, ... when it had none.
    pub feature: String,
    pub score: f32,
}

/// A gradient-boosted model (`BoosterHandle`).
#[derive(Debug)]
pub struct Booster {
    handle: sys::BoosterHandle,
}

// SAFETY: as for `DMatrix`: the handle is not tied to a thread, per-thread
// outputs are copied right after each call, and `&mut`/no `Sync` keeps calls
// from overlapping.
unsafe impl Send for Booster {}

/// Fewest rows a prediction lane takes: below it a thread costs more than
/// it saves.
const LANE_ROWS: usize = 2048;

/// A booster shared by prediction lanes.
struct Shared<'a>(&'a Booster);

// SAFETY: only prediction calls are made through a shared booster
// ([`Booster::predict_in_lanes`]), and XGBoost documents every prediction
// function of a tree booster (gbtree, dart: what `train` makes) as thread
// safe since 1.4 ("Thread Safety", doc/prediction.rst); each thread's output
// buffer is its own (thread-local) and is copied out before the call
// returns.
unsafe impl Sync for Shared<'_> {}

impl Booster {
    /// A new booster caching `matrices` (the training and evaluation sets).
    pub fn new(matrices: &[&DMatrix]) -> Result<Booster> {
        let handles: Vec<sys::DMatrixHandle> = matrices.iter().map(|m| m.handle).collect();
        let mut handle: sys::BoosterHandle = ptr::null_mut();
        // SAFETY: `handles` holds `len` live DMatrix handles (XGBoost takes
        // shared ownership of them); `handle` is written.
        check("XGBoosterCreate", unsafe {
            sys::XGBoosterCreate(
                if handles.is_empty() {
                    ptr::null()
                } else {
                    handles.as_ptr()
                },
                handles.len() as sys::bst_ulong,
                &mut handle,
            )
        })?;
        Ok(Booster { handle })
    }

    /// Sets one training parameter (`objective`, `eta`, `eval_metric`, ...),
    /// as XGBoost's `params` dict would.
    pub fn set_param(&mut self, name: &str, value: &str) -> Result<()> {
        let name = cstring("parameter name", name)?;
        let value = cstring("parameter value", value)?;
        // SAFETY: live handle, NUL-terminated strings XGBoost copies.
        check("XGBoosterSetParam", unsafe {
            sys::XGBoosterSetParam(self.handle, name.as_ptr(), value.as_ptr())
        })
    }

    /// Sets a model attribute (saved in the model file, read by Python's
    /// `Booster.attr`): `best_iteration` and `best_score` are those
    /// XGBoost's own early stopping sets.
    pub fn set_attr(&mut self, key: &str, value: &str) -> Result<()> {
        let key = cstring("attribute name", key)?;
        let value = cstring("attribute value", value)?;
        // SAFETY: live handle, NUL-terminated strings XGBoost copies.
        check("XGBoosterSetAttr", unsafe {
            sys::XGBoosterSetAttr(self.handle, key.as_ptr(), value.as_ptr())
        })
    }

    /// A model attribute (`None` when not set).
    pub fn attr(&self, key: &str) -> Result<Option<String>> {
        let key = cstring("attribute name", key)?;
        let mut out: *const c_char = ptr::null();
        let mut found: c_int = 0;
        // SAFETY: live handle, NUL-terminated key; `out` points to a
        // NUL-terminated string owned by the booster until its next call,
        // copied below.
        check("XGBoosterGetAttr", unsafe {
            sys::XGBoosterGetAttr(self.handle, key.as_ptr(), &mut out, &mut found)
        })?;
        if found == 0 || out.is_null() {
            return Ok(None);
        }
        // SAFETY: `out` is NUL-terminated (above).
        let value = unsafe { std::ffi::CStr::from_ptr(out) };
        Ok(Some(value.to_string_lossy().into_owned()))
    }

    /// Runs boosting round `iter` (0-based) on `train`.
    pub fn update(&mut self, iter: u32, train: &DMatrix) -> Result<()> {
        let iter = round_index(iter)?;
        // SAFETY: live booster and matrix handles.
        check("XGBoosterUpdateOneIter", unsafe {
            sys::XGBoosterUpdateOneIter(self.handle, iter, train.handle)
        })
    }

    /// XGBoost's evaluation line for round `iter`, e.g.
    /// `[3]\ttrain-auc:0.97\tvalid-auc:0.91`, with the `eval_metric`s set.
    pub fn eval_raw(&mut self, iter: u32, sets: &[(&DMatrix, &str)]) -> Result<String> {
        let iter = round_index(iter)?;
        let mut handles: Vec<sys::DMatrixHandle> = sets.iter().map(|(m, _)| m.handle).collect();
        let names = sets
            .iter()
            .map(|(_, n)| cstring("evaluation name", n))
            .collect::<Result<Vec<_>>>()?;
        let mut name_ptrs: Vec<*const c_char> = names.iter().map(|c| c.as_ptr()).collect();
        let mut out: *const c_char = ptr::null();
        // SAFETY: live booster; `handles` and `name_ptrs` both hold
        // `sets.len()` live entries (`names` keeps the strings alive); `out`
        // receives a thread-local string copied out below before any other
        // XGBoost call.
        check("XGBoosterEvalOneIter", unsafe {
            sys::XGBoosterEvalOneIter(
                self.handle,
                iter,
                handles.as_mut_ptr(),
                name_ptrs.as_mut_ptr(),
                sets.len() as sys::bst_ulong,
                &mut out,
            )
        })?;
        if out.is_null() {
            return Err(XgbError::Unexpected {
                call: "XGBoosterEvalOneIter",
                detail: "no result".into(),
            });
        }
        // SAFETY: non-null NUL-terminated string, alive until the next call.
        Ok(unsafe { CStr::from_ptr(out) }
            .to_string_lossy()
            .into_owned())
    }

    /// The metrics of round `iter` on each named matrix, parsed from
    /// [`Booster::eval_raw`], in XGBoost's order.
    pub fn eval(&mut self, iter: u32, sets: &[(&DMatrix, &str)]) -> Result<Vec<EvalMetric>> {
        let line = self.eval_raw(iter, sets)?;
        parse_eval(&line, sets.iter().map(|(_, n)| *n))
    }

    /// Predicted values (probabilities for `binary:logistic`), one per row,
    /// from every tree.
    pub fn predict(&self, data: &DMatrix) -> Result<Vec<f32>> {
        Ok(self.predict_with(data, PredictKind::Value, None)?.0)
    }

    /// Raw scores (log-odds for `binary:logistic`), one per row.
    pub fn predict_margin(&self, data: &DMatrix) -> Result<Vec<f32>> {
        Ok(self.predict_with(data, PredictKind::Margin, None)?.0)
    }

    /// SHAP contributions, row-major, and the row width (features + 1, the
    /// last being the bias): each row sums to the margin.
    pub fn predict_contribs(&self, data: &DMatrix) -> Result<(Vec<f32>, usize)> {
        self.predict_with(data, PredictKind::Contribs, None)
    }

    /// Prediction of `kind` using the trees of rounds `begin..end` (all when
    /// `None`; early stopping predicts with `Some((0, best_iteration + 1))`).
    /// Returns the values row-major and the row width.
    pub fn predict_with(
        &self,
        data: &DMatrix,
        kind: PredictKind,
        rounds: Option<(u32, u32)>,
    ) -> Result<(Vec<f32>, usize)> {
        let config = predict_config(kind, rounds, false)?;
        // SAFETY: live handles, NUL-terminated config; `read_prediction`
        // passes valid out-pointers.
        read_prediction("XGBoosterPredictFromDMatrix", |shape, dim, result| unsafe {
            sys::XGBoosterPredictFromDMatrix(
                self.handle,
                data.handle,
                config.as_ptr(),
                shape,
                dim,
                result,
            )
        })
    }

    /// Predicted values of rows given as equally long Arrow columns (one
    /// feature each, in order), straight from their buffers: XGBoost's
    /// in-place prediction, no `DMatrix` and no copy of the values. NULL
    /// and NaN are missing. The same scores as [`Booster::predict_with`]
    /// over a `DMatrix` of the columns, and as Python's `inplace_predict`.
    pub fn predict_columns(
        &self,
        columns: &[&Float64Array],
        kind: PredictKind,
        rounds: Option<(u32, u32)>,
    ) -> Result<(Vec<f32>, usize)> {
        let table = Columnar::new(columns)?;
        if table.rows == 0 {
            return Ok((Vec::new(), 1));
        }
        let config = predict_config(kind, rounds, true)?;
        // SAFETY: live booster; `table.json` describes live Arrow buffers
        // (kept alive by `columns` and `table` for the whole call) that
        // XGBoost only reads during it; no proxy DMatrix (NULL is allowed);
        // `read_prediction` passes valid out-pointers.
        read_prediction(
            "XGBoosterPredictFromColumnar",
            |shape, dim, result| unsafe {
                sys::XGBoosterPredictFromColumnar(
                    self.handle,
                    table.json.as_ptr(),
                    config.as_ptr(),
                    ptr::null_mut(),
                    shape,
                    dim,
                    result,
                )
            },
        )
    }

    /// [`Booster::predict_columns`] (`kind` Value or Margin) or the SHAP
    /// contributions (`kind` Contribs, through a `DMatrix` per lane) of the
    /// rows, split into up to `lanes` ranges predicted side by side on
    /// scoped threads, each with XGBoost on one thread. The values are those
    /// of one call: each row's prediction depends on that row alone.
    ///
    /// For callers predicting often on every core themselves (the streaming
    /// executor): XGBoost's own OpenMP teams would leave their threads
    /// spinning against the caller's between calls.
    pub fn predict_in_lanes(
        &self,
        columns: &[&Float64Array],
        kind: PredictKind,
        rounds: Option<(u32, u32)>,
        lanes: usize,
    ) -> Result<(Vec<f32>, usize)> {
        let rows = columns.first().map_or(0, |c| c.len());
        let one = |b: &Shared<'_>, range: std::ops::Range<usize>| -> Result<(Vec<f32>, usize)> {
            let sliced: Vec<Float64Array> = columns
                .iter()
                .map(|c| Float64Array::slice(c, range.start, range.len()))
                .collect();
            let refs: Vec<&Float64Array> = sliced.iter().collect();
            match kind {
                PredictKind::Contribs => {
                    let m = DMatrix::from_columns_on(&refs, None, None, 1)?;
                    b.0.predict_with(&m, kind, rounds)
                }
                _ => b.0.predict_columns(&refs, kind, rounds),
            }
        };
        let shared = Shared(self);
        // Lanes cut at multiples of 64 rows, so that sliced validity bitmaps
        // stay byte-aligned (no copy).
        let per = rows.div_ceil(lanes.max(1)).div_ceil(64) * 64;
        if lanes <= 1 || rows < 2 * LANE_ROWS || per >= rows {
            return one(&shared, 0..rows);
        }
        let ranges: Vec<std::ops::Range<usize>> = (0..rows)
            .step_by(per)
            .map(|a| a..(a + per).min(rows))
            .collect();
        let results: Vec<Result<(Vec<f32>, usize)>> = std::thread::scope(|scope| {
            let (shared, one) = (&shared, &one);
            let handles: Vec<_> = ranges[1..]
                .iter()
                .cloned()
                .map(|r| scope.spawn(move || one(shared, r)))
                .collect();
            let mut out = vec![one(shared, ranges[0].clone())];
            for h in handles {
                out.push(h.join().unwrap_or_else(|_| {
                    Err(XgbError::Unexpected {
                        call: "predict_in_lanes",
                        detail: "a prediction lane panicked".into(),
                    })
                }));
            }
            out
        });
        let mut values = Vec::new();
        let mut width = 1;
        for r in results {
            let (v, w) = r?;
            values.extend_from_slice(&v);
            width = w;
        }
        Ok((values, width))
    }

    /// Rounds boosted so far.
    pub fn num_boosted_rounds(&self) -> Result<u32> {
        let mut out: c_int = 0;
        // SAFETY: live handle; `out` is written.
        check("XGBoosterBoostedRounds", unsafe {
            sys::XGBoosterBoostedRounds(self.handle, &mut out)
        })?;
        Ok(out.max(0) as u32)
    }

    /// The model in XGBoost's `json` or `ubj` (binary JSON) format.
    pub fn save_to_buffer(&self, format: &str) -> Result<Vec<u8>> {
        let config = cstring("config", &json!({ "format": format }).to_string())?;
        let mut len: sys::bst_ulong = 0;
        let mut out: *const c_char = ptr::null();
        // SAFETY: live handle, NUL-terminated config; `out` points to `len`
        // bytes owned by the booster until its next call, copied below.
        check("XGBoosterSaveModelToBuffer", unsafe {
            sys::XGBoosterSaveModelToBuffer(self.handle, config.as_ptr(), &mut len, &mut out)
        })?;
        if len == 0 {
            return Ok(Vec::new());
        }
        if out.is_null() {
            return Err(XgbError::Unexpected {
                call: "XGBoosterSaveModelToBuffer",
                detail: "no buffer".into(),
            });
        }
        // SAFETY: `out` holds `len` bytes (above).
        Ok(unsafe { std::slice::from_raw_parts(out.cast::<u8>(), len as usize) }.to_vec())
    }

    /// A booster from a model saved in JSON or UBJSON (detected by XGBoost).
    pub fn load_from_buffer(bytes: &[u8]) -> Result<Booster> {
        let booster = Booster::new(&[])?;
        // SAFETY: live handle; `bytes` is `len` readable bytes XGBoost parses
        // during the call.
        check("XGBoosterLoadModelFromBuffer", unsafe {
            sys::XGBoosterLoadModelFromBuffer(
                booster.handle,
                bytes.as_ptr().cast(),
                bytes.len() as sys::bst_ulong,
            )
        })?;
        Ok(booster)
    }

    /// Writes the model as XGBoost JSON (what Python's
    /// `xgboost.Booster(model_file=...)` loads), whatever the extension.
    pub fn save_json(&self, path: &Path) -> Result<()> {
        let bytes = self.save_to_buffer("json")?;
        std::fs::write(path, bytes).map_err(|source| XgbError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads a model written by [`Booster::save_json`] or Python's
    /// `save_model("*.json")`.
    pub fn load_json(path: &Path) -> Result<Booster> {
        let bytes = std::fs::read(path).map_err(|source| XgbError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Booster::load_from_buffer(&bytes)
    }

    /// Names the model's features, in column order: they are written into
    /// the JSON model (Python's `feature_names`) and name the importance
    /// scores. (XGBoost's C API does not take them from the training matrix.)
    pub fn set_feature_names(&mut self, names: &[&str]) -> Result<()> {
        let owned = names
            .iter()
            .map(|n| cstring("feature name", n))
            .collect::<Result<Vec<_>>>()?;
        let mut ptrs: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
        let field = cstring("field", "feature_name")?;
        // SAFETY: live handle; `ptrs` holds `names.len()` NUL-terminated
        // strings kept alive by `owned`; XGBoost copies them.
        check("XGBoosterSetStrFeatureInfo", unsafe {
            sys::XGBoosterSetStrFeatureInfo(
                self.handle,
                field.as_ptr(),
                ptrs.as_mut_ptr(),
                ptrs.len() as sys::bst_ulong,
            )
        })
    }

    /// Feature names of the model (empty if none were set).
    pub fn feature_names(&self) -> Result<Vec<String>> {
        let field = cstring("field", "feature_name")?;
        let mut len: sys::bst_ulong = 0;
        let mut out: *mut *const c_char = ptr::null_mut();
        // SAFETY: live handle; `out` receives `len` thread-local strings,
        // copied below before any other call.
        check("XGBoosterGetStrFeatureInfo", unsafe {
            sys::XGBoosterGetStrFeatureInfo(self.handle, field.as_ptr(), &mut len, &mut out)
        })?;
        // SAFETY: `len` pointers to NUL-terminated strings (above).
        Ok(unsafe { c_strings(out, len) })
    }

    /// Average gain of the splits on each feature (features never split on
    /// are absent), as Python's `get_score(importance_type="gain")`.
    pub fn feature_importance_gain(&self) -> Result<Vec<FeatureScore>> {
        let config = cstring("config", r#"{"importance_type": "gain"}"#)?;
        let mut n_features: sys::bst_ulong = 0;
        let mut features: *mut *const c_char = ptr::null_mut();
        let mut dim: sys::bst_ulong = 0;
        let mut shape: *const sys::bst_ulong = ptr::null();
        let mut scores: *const f32 = ptr::null();
        // SAFETY: live handle, NUL-terminated config; the outputs are
        // thread-local buffers copied below before any other call.
        check("XGBoosterFeatureScore", unsafe {
            sys::XGBoosterFeatureScore(
                self.handle,
                config.as_ptr(),
                &mut n_features,
                &mut features,
                &mut dim,
                &mut shape,
                &mut scores,
            )
        })?;
        // SAFETY: `n_features` names (above).
        let names = unsafe { c_strings(features, n_features) };
        if names.is_empty() {
            return Ok(Vec::new());
        }
        if scores.is_null() {
            return Err(XgbError::Unexpected {
                call: "XGBoosterFeatureScore",
                detail: "no scores".into(),
            });
        }
        // SAFETY: for tree models there is one score per feature name.
        let scores = unsafe { std::slice::from_raw_parts(scores, names.len()) };
        Ok(names
            .into_iter()
            .zip(scores)
            .map(|(feature, &score)| FeatureScore { feature, score })
            .collect())
    }
}

impl Drop for Booster {
    fn drop(&mut self) {
        // SAFETY: the handle came from XGBoosterCreate and is freed once.
        unsafe {
            sys::XGBoosterFree(self.handle);
        }
    }
}

/// Copies `len` C strings out of an XGBoost output array.
///
/// # Safety
/// `ptrs` must point to `len` valid NUL-terminated strings (or `len` be 0).
unsafe fn c_strings(ptrs: *mut *const c_char, len: sys::bst_ulong) -> Vec<String> {
    if ptrs.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: guaranteed by the caller.
    let ptrs = unsafe { std::slice::from_raw_parts(ptrs, len as usize) };
    ptrs.iter()
        // SAFETY: each entry is a NUL-terminated string (caller).
        .map(|&p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        .collect()
}

fn round_index(iter: u32) -> Result<c_int> {
    c_int::try_from(iter).map_err(|_| XgbError::Unexpected {
        call: "round index",
        detail: format!("{iter} does not fit a C int"),
    })
}

/// Parses `[3]\ttrain-auc:0.97\tvalid-auc:0.91` given the matrix names
/// (which may contain `-`, so they are matched as prefixes).
fn parse_eval<'a>(
    line: &str,
    names: impl Iterator<Item = &'a str> + Clone,
) -> Result<Vec<EvalMetric>> {
    let bad = || XgbError::Unexpected {
        call: "XGBoosterEvalOneIter",
        detail: format!("cannot parse {line:?}"),
    };
    let mut metrics = Vec::new();
    for item in line.split('\t').skip(1).filter(|s| !s.is_empty()) {
        let (key, value) = item.rsplit_once(':').ok_or_else(bad)?;
        let (data, metric) = names
            .clone()
            .filter_map(|n| {
                key.strip_prefix(n)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .map(|metric| (n, metric))
            })
            .max_by_key(|(n, _)| n.len())
            .ok_or_else(bad)?;
        metrics.push(EvalMetric {
            data: data.to_string(),
            metric: metric.to_string(),
            value: value.trim().parse().map_err(|_| bad())?,
        });
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    struct Data {
        columns: Vec<Float64Array>,
        label: Vec<f32>,
    }

    impl Data {
        fn refs(&self) -> Vec<&Float64Array> {
            self.columns.iter().collect()
        }
        fn matrix(&self) -> DMatrix {
            DMatrix::from_columns(&self.refs(), Some(&self.label), None).unwrap()
        }
    }

    /// Two informative columns, a noise column with NULLs every 7th row.
    fn synthetic(rows: usize, seed: u64) -> Data {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut a, mut b, mut noise, mut label) = (vec![], vec![], vec![], vec![]);
        for i in 0..rows {
            let x: f64 = rng.random();
            let y: f64 = rng.random();
            let e: f64 = rng.random::<f64>() - 0.5;
            a.push(x);
            b.push(y);
            noise.push((i % 7 != 3).then(|| rng.random::<f64>()));
            label.push(if x + 0.5 * y + 0.2 * e > 0.8 {
                1.0
            } else {
                0.0
            });
        }
        Data {
            columns: vec![a.into(), b.into(), noise.into()],
            label,
        }
    }

    fn train(data: &DMatrix, rounds: u32) -> Booster {
        let mut booster = Booster::new(&[data]).unwrap();
        for (k, v) in [
            ("objective", "binary:logistic"),
            ("tree_method", "hist"),
            ("eval_metric", "auc"),
            ("seed", "7"),
            ("max_depth", "4"),
            ("eta", "0.3"),
        ] {
            booster.set_param(k, v).unwrap();
        }
        for round in 0..rounds {
            booster.update(round, data).unwrap();
        }
        booster
    }

    #[test]
    fn trains_a_separable_problem() {
        let data = synthetic(2000, 1);
        let mut m = data.matrix();
        m.set_feature_names(&["a", "b", "noise"]).unwrap();
        assert_eq!((m.num_rows().unwrap(), m.num_cols().unwrap()), (2000, 3));
        let mut booster = train(&m, 20);
        booster.set_feature_names(&["a", "b", "noise"]).unwrap();
        assert_eq!(booster.num_boosted_rounds().unwrap(), 20);

        let metrics = booster.eval(19, &[(&m, "train")]).unwrap();
        assert_eq!(metrics.len(), 1, "{metrics:?}");
        assert_eq!((&*metrics[0].data, &*metrics[0].metric), ("train", "auc"));
        assert!(metrics[0].value > 0.9, "{metrics:?}");

        let p = booster.predict(&m).unwrap();
        assert_eq!(p.len(), 2000);
        assert!(p.iter().all(|&v| v > 0.0 && v < 1.0));

        assert_eq!(booster.feature_names().unwrap(), ["a", "b", "noise"]);
        let gain = booster.feature_importance_gain().unwrap();
        let of = |f: &str| {
            gain.iter()
                .find(|s| s.feature == f)
                .map_or(0.0, |s| s.score)
        };
        assert!(of("a") > of("noise") && of("b") > of("noise"), "{gain:?}");
    }

    #[test]
    fn training_is_deterministic_for_a_seed() {
        let data = synthetic(1000, 2);
        let p1 = train(&data.matrix(), 20).predict(&data.matrix()).unwrap();
        let p2 = train(&data.matrix(), 20).predict(&data.matrix()).unwrap();
        assert_eq!(p1, p2);
    }

    #[test]
    fn json_round_trip_predicts_the_same() {
        let data = synthetic(1000, 3);
        let m = data.matrix();
        let mut booster = train(&m, 20);
        booster.set_feature_names(&["a", "b", "noise"]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.json");
        booster.save_json(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(parsed["learner"]["gradient_booster"].is_object());
        assert_eq!(
            parsed["learner"]["feature_names"],
            json!(["a", "b", "noise"])
        );

        let loaded = Booster::load_json(&path).unwrap();
        assert_eq!(loaded.num_boosted_rounds().unwrap(), 20);
        assert_eq!(loaded.feature_names().unwrap(), ["a", "b", "noise"]);
        assert_eq!(loaded.predict(&m).unwrap(), booster.predict(&m).unwrap());

        let ubj = booster.save_to_buffer("ubj").unwrap();
        let from_ubj = Booster::load_from_buffer(&ubj).unwrap();
        assert_eq!(from_ubj.predict(&m).unwrap(), booster.predict(&m).unwrap());

        let err = Booster::load_json(&dir.path().join("missing.json")).unwrap_err();
        assert!(err.to_string().contains("missing.json"), "{err}");
    }

    /// Lanes of single-threaded predictions give the bits of one call, in
    /// place or through a DMatrix, values and SHAP contributions alike, for
    /// row counts that do not divide into lanes of 64 and NULLs throughout.
    #[test]
    fn predictions_in_lanes_equal_one_call() {
        let data = synthetic(9_001, 6);
        let m = data.matrix();
        let mut booster = train(&m, 12);
        let whole = booster.predict(&m).unwrap();
        let (contribs, width) = booster.predict_contribs(&m).unwrap();
        booster.set_param("nthread", "1").unwrap();
        for lanes in [1, 2, 3, 7] {
            let (v, w) = booster
                .predict_in_lanes(&data.refs(), PredictKind::Value, None, lanes)
                .unwrap();
            assert_eq!((v.len(), w), (whole.len(), 1));
            assert!(
                v.iter()
                    .zip(&whole)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{lanes} lanes"
            );
            let (c, w) = booster
                .predict_in_lanes(&data.refs(), PredictKind::Contribs, None, lanes)
                .unwrap();
            assert_eq!(w, width);
            assert!(
                c.iter()
                    .zip(&contribs)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{lanes} lanes"
            );
        }
        // A slice starting off a byte boundary keeps its NULLs.
        let sliced: Vec<Float64Array> = data.columns.iter().map(|c| c.slice(13, 5000)).collect();
        let refs: Vec<&Float64Array> = sliced.iter().collect();
        let (v, _) = booster
            .predict_in_lanes(&refs, PredictKind::Value, None, 2)
            .unwrap();
        assert!(v
            .iter()
            .zip(&whole[13..5013])
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn shap_rows_sum_to_the_margin() {
        let data = synthetic(500, 4);
        let m = data.matrix();
        let booster = train(&m, 20);
        let (contribs, width) = booster.predict_contribs(&m).unwrap();
        assert_eq!(width, 4);
        assert_eq!(contribs.len(), 500 * width);
        let margin = booster.predict_margin(&m).unwrap();
        let prob = booster.predict(&m).unwrap();
        for (i, row) in contribs.chunks(width).enumerate() {
            let sum: f64 = row.iter().map(|&c| c as f64).sum();
            assert!(
                (sum - margin[i] as f64).abs() < 1e-4,
                "row {i}: {sum} vs {}",
                margin[i]
            );
            let sigmoid = 1.0 / (1.0 + (-sum).exp());
            assert!((sigmoid - prob[i] as f64).abs() < 1e-5, "row {i}");
        }
    }

    #[test]
    fn iteration_range_limits_the_trees() {
        let data = synthetic(500, 5);
        let m = data.matrix();
        let booster = train(&m, 10);
        let (first5, _) = booster
            .predict_with(&m, PredictKind::Value, Some((0, 5)))
            .unwrap();
        let (all, _) = booster.predict_with(&m, PredictKind::Value, None).unwrap();
        assert_ne!(first5, all);
        assert_eq!(first5, train(&m, 5).predict(&m).unwrap());
    }

    /// A column that is missing exactly for the positives (and uniform in
    /// [0.2, 1) otherwise), given as NULL or as NaN; Arrow stores 0.0 under
    /// a NULL, so a mask read wrongly shows up as a 0.0 value.
    fn missing_is_informative(rows: usize, as_nan: bool) -> Data {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let (mut x, mut label) = (vec![], vec![]);
        for _ in 0..rows {
            let positive = rng.random::<f64>() < 0.3;
            let v = 0.2 + 0.8 * rng.random::<f64>();
            x.push(match (positive, as_nan) {
                (false, _) => Some(v),
                (true, false) => None,
                (true, true) => Some(f64::NAN),
            });
            label.push(if positive { 1.0 } else { 0.0 });
        }
        Data {
            columns: vec![x.into()],
            label,
        }
    }

    #[test]
    fn null_and_nan_are_both_missing() {
        let with_nulls = missing_is_informative(1000, false);
        let with_nans = missing_is_informative(1000, true);
        assert!((200..400).contains(&with_nulls.columns[0].null_count()));
        let booster = train(&with_nulls.matrix(), 10);
        let p_nulls = booster.predict(&with_nulls.matrix()).unwrap();
        assert_eq!(p_nulls, booster.predict(&with_nans.matrix()).unwrap());
        // Trained on NaNs, the same model.
        let other = train(&with_nans.matrix(), 10);
        assert_eq!(p_nulls, other.predict(&with_nulls.matrix()).unwrap());

        // NULL, NaN, a 0.0 value, a 0.5 value.
        let x = Float64Array::from(vec![None, Some(f64::NAN), Some(0.0), Some(0.5)]);
        let p = booster
            .predict(&DMatrix::from_columns(&[&x], None, None).unwrap())
            .unwrap();
        assert_eq!(p[0], p[1]);
        assert!(p[0] > 0.9 && p[3] < 0.1, "{p:?}");
        assert!(p[2] < 0.5, "a 0.0 value must not look missing: {p:?}");

        // The noise column of the synthetic set, NULL in one row and NaN in
        // the next, all else equal.
        let data = synthetic(1000, 6);
        let booster = train(&data.matrix(), 20);
        let a = Float64Array::from(vec![0.7, 0.7]);
        let b = Float64Array::from(vec![0.4, 0.4]);
        let noise = Float64Array::from(vec![None, Some(f64::NAN)]);
        let m = DMatrix::from_columns(&[&a, &b, &noise], None, None).unwrap();
        let p = booster.predict(&m).unwrap();
        assert_eq!(p[0], p[1]);
        let (c, w) = booster.predict_contribs(&m).unwrap();
        assert_eq!(c[..w], c[w..2 * w]);
    }

    #[test]
    fn sliced_arrays_keep_their_nulls() {
        let data = missing_is_informative(1000, false);
        let booster = train(&data.matrix(), 10);
        let full = booster.predict(&data.matrix()).unwrap();
        // Offset 13: not byte-aligned, so the bitmap must be re-aligned.
        for (offset, len) in [(13, 500), (16, 300), (0, 1000), (999, 1)] {
            let sliced = data.columns[0].slice(offset, len);
            let m = DMatrix::from_columns(&[&sliced], None, None).unwrap();
            assert_eq!(booster.predict(&m).unwrap(), full[offset..offset + len]);
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let a = Float64Array::from(vec![1.0, 2.0]);
        let b = Float64Array::from(vec![1.0]);
        let err = DMatrix::from_columns(&[&a, &b], None, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "xgboost: column 1 has 1 rows, the first column has 2"
        );
        let err = DMatrix::from_columns(&[&a], Some(&[1.0]), None).unwrap_err();
        assert!(err.to_string().contains("label has 1 rows"), "{err}");
        assert!(matches!(
            DMatrix::from_columns(&[], None, None),
            Err(XgbError::NoColumns)
        ));

        let m = DMatrix::from_columns(&[&a], Some(&[0.0, 1.0]), None).unwrap();
        let mut booster = Booster::new(&[&m]).unwrap();
        booster.set_param("objective", "binary:nonsense").unwrap();
        let err = booster.update(0, &m).unwrap_err();
        let XgbError::Xgboost { call, message } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*call, "XGBoosterUpdateOneIter");
        assert!(message.contains("nonsense"), "{message}");
    }

    #[test]
    fn parses_evaluation_lines() {
        let got = parse_eval(
            "[4]\ttrain-auc:0.97\ttrain-aucpr:0.5\tvalid-x-logloss:0.25",
            ["train", "valid-x"].into_iter(),
        )
        .unwrap();
        let flat: Vec<_> = got
            .iter()
            .map(|m| (m.data.as_str(), m.metric.as_str(), m.value))
            .collect();
        assert_eq!(
            flat,
            [
                ("train", "auc", 0.97),
                ("train", "aucpr", 0.5),
                ("valid-x", "logloss", 0.25)
            ]
        );
        assert!(parse_eval("[0]\tother-auc:1", ["train"].into_iter()).is_err());
    }
}
