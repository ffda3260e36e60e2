//! Finds XGBoost's C library for `xgboost_lib-sys` at run time.
//!
//! `xgboost_lib-sys` links `libxgboost.so` from `XGBOOST_LIB_DIR` (the folder
//! `scripts/xgboost-lib.sh` fills from PyPI's `xgboost-cpu` wheel) but leaves
//! no rpath, so a binary run outside cargo would need `LD_LIBRARY_PATH`. This
//! script bakes the folder into every binary, test and bench of the crate.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=XGBOOST_LIB_DIR");
    println!("cargo:rerun-if-changed=build.rs");

    let Some(dir) = env::var_os("XGBOOST_LIB_DIR").filter(|d| !d.is_empty()) else {
        fail("XGBOOST_LIB_DIR is not set");
    };
    let dir = Path::new(&dir);
    if !dir.join("libxgboost.so").exists() {
        fail(&format!(
            "XGBOOST_LIB_DIR={} holds no libxgboost.so",
            dir.display()
        ));
    }
    let Some(dir) = dir.to_str() else {
        fail(&format!(
            "XGBOOST_LIB_DIR={} is not valid UTF-8",
            dir.display()
        ));
    };

    // `--disable-new-dtags` writes DT_RPATH rather than DT_RUNPATH: the wheel's
    // libxgboost.so carries its own DT_RPATH (`$ORIGIN/../../xgboost_cpu.libs`,
    // the wheel's layout) and finds its vendored, hash-named libgomp only
    // through the executable's DT_RPATH, which the loader also searches for
    // dependencies of libraries; a DT_RUNPATH would be searched for the
    // executable's own dependencies only.
    println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags,-rpath,{dir}");
}

fn fail(why: &str) -> ! {
    eprintln!(
        "error: {why}.\n\
         stockanomaly links XGBoost's C library from the folder in XGBOOST_LIB_DIR.\n\
         Build with `make` (it sets the variable), or run\n\
         \x20   export XGBOOST_LIB_DIR=$(scripts/xgboost-lib.sh)\n\
         from the repository root first (it downloads the library once, into\n\
         ${{STOCKANOMALY_CACHE:-/var/tmp/stockanomaly}}/xgboost-3.4.1)."
    );
    std::process::exit(1);
}
