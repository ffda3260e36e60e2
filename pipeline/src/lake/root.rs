//! Parsing a lake root (`parquet/`, `file:///data/lake`, `s3://bucket/prefix`,
//! `memory://name`) into an object store and a prefix.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStore;
use url::Url;

use super::LakeError;

/// Where a lake lives: an object store, the URL DataFusion knows it by, and
/// the prefix of the lake inside it.
#[derive(Clone)]
pub struct LakeRoot {
    display: String,
    store: Arc<dyn ObjectStore>,
    /// `scheme://authority/`, the key of the store in DataFusion's registry.
    store_url: Url,
    prefix: Path,
    local: Option<PathBuf>,
}

impl fmt::Debug for LakeRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LakeRoot")
            .field("root", &self.display)
            .finish()
    }
}

impl fmt::Display for LakeRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

impl LakeRoot {
    /// Parses a root:
    ///
    /// * a plain path or `file:///abs/path`: a local folder, created if missing;
    /// * `s3://bucket/prefix`: S3 or an S3-compatible server, configured by the
    ///   usual `AWS_*` variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    ///   `AWS_REGION`, and `AWS_ENDPOINT_URL` to point at another server; plain
    ///   `http://` endpoints are allowed);
    /// * `memory://name/prefix`: an in-process store shared by every root with
    ///   the same name, for tests.
    ///
    /// ```
    /// let root = stockanomaly::lake::LakeRoot::parse("memory://doc/lake").unwrap();
    /// assert_eq!(root.table_url("ticks"), "memory://doc/lake/ticks/");
    /// ```
    pub fn parse(root: &str) -> Result<Self, LakeError> {
        let invalid = |reason: String| LakeError::InvalidRoot {
            root: root.to_owned(),
            reason,
        };
        if root.trim().is_empty() {
            return Err(invalid("empty".into()));
        }
        if !root.contains("://") {
            return Self::local(root, PathBuf::from(root));
        }
        let url = Url::parse(root).map_err(|e| invalid(e.to_string()))?;
        let prefix_of = |url: &Url| {
            Path::parse(url.path().trim_matches('/')).map_err(|e| invalid(e.to_string()))
        };
        match url.scheme() {
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| invalid("not an absolute file path".into()))?;
                Self::local(root, path)
            }
            "memory" => {
                let name = url.host_str().unwrap_or("default").to_owned();
                Ok(Self {
                    display: root.to_owned(),
                    store: memory_store(&name),
                    store_url: store_url(&format!("memory://{name}/"), &invalid)?,
                    prefix: prefix_of(&url)?,
                    local: None,
                })
            }
            "s3" | "s3a" => {
                let bucket = url
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| invalid("no bucket in the URL (s3://bucket/prefix)".into()))?
                    .to_owned();
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket);
                let endpoint = std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .ok();
                if let Some(ep) = endpoint {
                    // A custom endpoint (MinIO, moto, Ceph) usually serves
                    // path-style URLs, often over plain HTTP on a LAN.
                    builder = builder
                        .with_allow_http(ep.starts_with("http://"))
                        .with_virtual_hosted_style_request(false)
                        .with_endpoint(ep);
                }
                if std::env::var("AWS_REGION").is_err()
                    && std::env::var("AWS_DEFAULT_REGION").is_err()
                {
                    builder = builder.with_region("us-east-1");
                }
                let store = builder.build().map_err(|e| invalid(e.to_string()))?;
                Ok(Self {
                    display: root.to_owned(),
                    store: Arc::new(store),
                    store_url: store_url(&format!("s3://{bucket}/"), &invalid)?,
                    prefix: prefix_of(&url)?,
                    local: None,
                })
            }
            other => Err(invalid(format!(
                "unsupported scheme `{other}://` (use a path, file://, s3:// or memory://)"
            ))),
        }
    }

    fn local(root: &str, path: PathBuf) -> Result<Self, LakeError> {
        let invalid = |reason: String| LakeError::InvalidRoot {
            root: root.to_owned(),
            reason,
        };
        std::fs::create_dir_all(&path)
            .map_err(|e| invalid(format!("cannot create folder {}: {e}", path.display())))?;
        let abs = std::fs::canonicalize(&path)
            .map_err(|e| invalid(format!("cannot resolve {}: {e}", path.display())))?;
        let prefix = Path::from_absolute_path(&abs).map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            display: root.to_owned(),
            store: Arc::new(LocalFileSystem::new()),
            store_url: store_url("file:///", &invalid)?,
            prefix,
            local: Some(abs),
        })
    }

    /// The root as a URL that names the same lake from any process and
    /// folder (`file:///abs/path`, `s3://bucket/prefix`): what crosses to
    /// the executors of a cluster.
    ///
    /// ```
    /// let root = stockanomaly::lake::LakeRoot::parse("memory://doc/url").unwrap();
    /// assert_eq!(root.url(), "memory://doc/url");
    /// ```
    pub fn url(&self) -> String {
        if self.prefix.as_ref().is_empty() {
            self.store_url.to_string()
        } else {
            format!("{}{}", self.store_url, self.prefix)
        }
    }

    /// The object store holding the lake.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The URL under which DataFusion must know [`store`](Self::store).
    pub fn store_url(&self) -> &Url {
        &self.store_url
    }

    /// The local folder, for a local lake.
    pub fn local_path(&self) -> Option<&std::path::Path> {
        self.local.as_deref()
    }

    /// The object path of a table's folder (or of anything under the root).
    pub fn path(&self, relative: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in relative.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// The URL of a table's folder, with a trailing slash, as DataFusion's
    /// listing tables want it.
    pub fn table_url(&self, table: &str) -> String {
        // The store URL ends in `/` and object paths never start with one.
        format!("{}{}/", self.store_url, self.path(table))
    }
}

fn store_url(s: &str, invalid: &dyn Fn(String) -> LakeError) -> Result<Url, LakeError> {
    Url::parse(s).map_err(|e| invalid(e.to_string()))
}

/// In-memory stores live for the process, one per name, so that every root
/// that names `memory://x` sees the same data.
fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    stores
        .entry(name.to_owned())
        .or_insert_with(|| Arc::new(InMemory::new()))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind_of_root() {
        let dir = tempfile::tempdir().unwrap();
        let local = LakeRoot::parse(dir.path().join("lake").to_str().unwrap()).unwrap();
        assert!(local.local_path().unwrap().ends_with("lake"));
        assert!(local.table_url("ticks").starts_with("file:///"));
        assert!(local.table_url("ticks").ends_with("/lake/ticks/"));

        let url = format!("file://{}", dir.path().join("other").display());
        assert!(LakeRoot::parse(&url).unwrap().local_path().is_some());

        let mem = LakeRoot::parse("memory://t1/a/b").unwrap();
        assert_eq!(mem.table_url("labels"), "memory://t1/a/b/labels/");
        let mem_root = LakeRoot::parse("memory://t1").unwrap();
        assert_eq!(mem_root.table_url("ticks"), "memory://t1/ticks/");

        let s3 = LakeRoot::parse("s3://bucket/some/prefix").unwrap();
        assert_eq!(s3.table_url("ticks"), "s3://bucket/some/prefix/ticks/");
        assert_eq!(s3.store_url().as_str(), "s3://bucket/");
    }

    #[test]
    fn refuses_bad_roots_with_the_reason() {
        for (root, want) in [
            ("", "empty"),
            ("ftp://host/x", "unsupported scheme"),
            ("s3:///prefix", "no bucket"),
        ] {
            let err = LakeRoot::parse(root).unwrap_err().to_string();
            assert!(err.contains(want), "{root}: {err}");
        }
    }
}
