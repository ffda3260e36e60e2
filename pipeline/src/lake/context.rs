//! The DataFusion session over a lake: every table registered as a listing
//! table with `date` partition pruning, and every StockAnomaly UDF.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::TableReference;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::TryStreamExt;
use object_store::ObjectStore;

use super::table::DATE_COLUMN;
use super::{LakeError, LakeRoot, TableSpec};

/// A session with the lake's standard tables (`ticks`, `labels`, `scores`) and all
/// UDFs registered.
///
/// A table with no files yet is registered empty with its schema, so queries
/// over a new lake answer zero rows instead of failing.
///
/// ```
/// # tokio_test_block_on(async {
/// use stockanomaly::lake::{session_context, LakeRoot};
/// let root = LakeRoot::parse("memory://doc-session").unwrap();
/// let ctx = session_context(&root).await.unwrap();
/// let n = ctx.sql("SELECT count(*) FROM ticks").await.unwrap().count().await.unwrap();
/// assert_eq!(n, 1);
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Runtime::new().unwrap().block_on(f)
/// # }
/// ```
pub async fn session_context(root: &LakeRoot) -> Result<SessionContext, LakeError> {
    let config = SessionConfig::new().with_information_schema(true);
    let ctx = SessionContext::new_with_config(config);
    if root.store_url().scheme() != "file" {
        ctx.register_object_store(root.store_url(), Arc::clone(root.store()));
    }
    stockanomaly_udfs::register_all(&ctx);
    for spec in TableSpec::standard() {
        register_table(&ctx, root, &spec).await?;
    }
    Ok(ctx)
}

/// A session with every lake table registered empty (schemas only) and all
/// UDFs: for planning and validating queries without touching data.
pub fn schema_session() -> SessionContext {
    let ctx = SessionContext::new();
    stockanomaly_udfs::register_all(&ctx);
    for spec in TableSpec::standard() {
        // A MemTable over a well-formed schema cannot fail to build.
        if let Ok(t) = MemTable::try_new(with_partitions(&spec), vec![vec![]]) {
            let _ = ctx.register_table(spec.name.as_str(), Arc::new(t));
        }
    }
    ctx
}

/// `batch` with a `date` column, the partition column of the lake's
/// tables: the UTC date of its first column's time (a tick's `ts`, the
/// `symbols` table's validity start, ...), whatever that column's name.
pub fn with_date(
    batch: &arrow::array::RecordBatch,
) -> Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
    use crate::tick::DAY_US;
    use arrow::array::{Array, AsArray, StringBuilder};
    use arrow::datatypes::TimestampMicrosecondType;
    let ts = batch.column(0).as_primitive::<TimestampMicrosecondType>();
    let mut date = StringBuilder::with_capacity(ts.len(), ts.len() * 10);
    // Rows of a day share its text: format each day once.
    let mut last: Option<(i64, String)> = None;
    for i in 0..ts.len() {
        if ts.is_null(i) {
            date.append_null();
            continue;
        }
        let day = ts.value(i).div_euclid(DAY_US);
        if last.as_ref().is_none_or(|(d, _)| *d != day) {
            let text = chrono::DateTime::from_timestamp_micros(ts.value(i))
                .map(|d| d.date_naive().to_string());
            last = text.map(|t| (day, t));
        }
        match &last {
            Some((_, t)) => date.append_value(t),
            None => date.append_null(),
        }
    }
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(DATE_COLUMN, DataType::Utf8, false));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(date.finish()));
    arrow::array::RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// Registers one table of the lake in `ctx` under its name.
pub async fn register_table(
    ctx: &SessionContext,
    root: &LakeRoot,
    spec: &TableSpec,
) -> Result<(), LakeError> {
    let df_err = |source| LakeError::DataFusion {
        table: spec.name.clone(),
        source,
    };
    let schema = with_partitions(spec);
    let provider: Arc<dyn datafusion::catalog::TableProvider> =
        if has_files(root.store().as_ref(), root, &spec.name).await? {
            let url = ListingTableUrl::parse(root.table_url(&spec.name)).map_err(df_err)?;
            let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet")
                .with_table_partition_cols(partition_cols(spec));
            let config = ListingTableConfig::new(url)
                .with_listing_options(options)
                .with_schema(Arc::clone(&spec.schema));
            Arc::new(ListingTable::try_new(config).map_err(df_err)?)
        } else {
            Arc::new(MemTable::try_new(schema, vec![vec![]]).map_err(df_err)?)
        };
    // Bare: a feature snapshot's name (`features/<hash>`) is not an identifier.
    ctx.register_table(TableReference::bare(spec.name.clone()), provider)
        .map_err(df_err)?;
    Ok(())
}

/// The Hive partition columns of `spec`, outermost first.
fn partition_cols(spec: &TableSpec) -> Vec<(String, DataType)> {
    spec.outer_partition
        .into_iter()
        .chain([DATE_COLUMN])
        .map(|c| (c.to_owned(), DataType::Utf8))
        .collect()
}

/// `spec`'s schema with its partition columns (`date`, and the outer one if
/// any) appended, as sessions register the table.
pub fn with_partitions(spec: &TableSpec) -> SchemaRef {
    let mut fields: Vec<Field> = spec
        .schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    for (name, ty) in partition_cols(spec) {
        fields.push(Field::new(name, ty, false));
    }
    Arc::new(Schema::new(fields))
}

async fn has_files(
    store: &dyn ObjectStore,
    root: &LakeRoot,
    table: &str,
) -> Result<bool, LakeError> {
    let prefix = root.path(table);
    let mut files = store.list(Some(&prefix));
    loop {
        match files.try_next().await {
            Ok(Some(meta)) if meta.location.as_ref().ends_with(".parquet") => return Ok(true),
            Ok(Some(_)) => continue,
            Ok(None) => return Ok(false),
            Err(source) => {
                return Err(LakeError::Store {
                    path: prefix.to_string(),
                    source,
                })
            }
        }
    }
}
