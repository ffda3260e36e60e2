//! `stockanomaly ingest csv` on NSE's UDiFF common bhavcopy: recognised by
//! its header, plain or zipped, closes stamped at 15:30 Asia/Kolkata, symbols
//! listed on XNSE. The files are written by the tests, in the documented
//! shape (feeds.md §4), not downloaded.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::{ok, run, sql_number};

/// The 34 UDiFF columns, in order.
const HEADER: &str = "TradDt,BizDt,Sgmt,Src,FinInstrmTp,FinInstrmId,ISIN,TckrSymb,SctySrs,\
XpryDt,FininstrmActlXpryDt,StrkPric,OptnTp,FinInstrmNm,OpnPric,HghPric,LwPric,ClsPric,\
LastPric,PrvsClsgPric,UndrlygPric,SttlmPric,OpnIntrst,ChngInOpnIntrst,TtlTradgVol,TtlTrfVal,\
TtlNbOfTxsExctd,SsnId,NewBrdLotQty,Rmks,Rsvd1,Rsvd2,Rsvd3,Rsvd4";

/// Three good rows (one in series BE) and two bad ones: a high below the
/// low, and a row cut short.
const ROWS: &[&str] = &[
    "2025-03-03,2025-03-03,CM,NSE,STK,2885,INE002A01018,RELIANCE,EQ,,,,,RELIANCE INDUSTRIES LTD,1180.00,1195.50,1172.10,1190.25,1190.00,1178.40,,1190.25,,,8123456,9652345678.90,215432,F1,1,,,,,",
    "2025-03-03,2025-03-03,CM,NSE,STK,2031,INE101A01026,M&M,EQ,,,,,MAHINDRA & MAHINDRA LTD,2650.00,2701.00,2640.05,2689.90,2690.00,2655.10,,2689.90,,,1234567,3312345678.00,98765,F1,1,,,,,",
    "2025-03-03,2025-03-03,CM,NSE,STK,14366,INE669E01016,IDEA,BE,,,,,VODAFONE IDEA LIMITED,7.50,7.80,7.40,7.65,7.65,7.55,,7.65,,,99999999,765000000.00,45678,F1,1,,,,,",
    "2025-03-03,2025-03-03,CM,NSE,STK,1594,INE009A01021,INFY,EQ,,,,,INFOSYS LIMITED,1700.00,1690.00,1710.00,1705.00,1705.00,1699.00,,1705.00,,,100,170500.00,10,F1,1,,,,,",
    "2025-03-03,2025-03-03,CM,NSE,STK,11536,INE467B01029,TCS,EQ",
];

fn lake(dir: &Path) -> String {
    dir.join("lake").display().to_string()
}

fn write_udiff(dir: &Path, name: &str, rows: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let mut text = format!("{HEADER}\n");
    for r in rows {
        text.push_str(r);
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn zip_of(dir: &Path, zip_name: &str, entries: &[(&str, &[u8])]) -> PathBuf {
    let path = dir.join(zip_name);
    let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        z.start_file(*name, opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
    path
}

/// Checks the lake holds exactly the three good rows, as NSE bars.
fn check_lake(dir: &Path, lake: &str) {
    let n = |q: &str| sql_number(dir, lake, q);
    assert_eq!(n("SELECT count(*) FROM ticks"), 3);
    // 15:30 in Kolkata (UTC+05:30) is 10:00 UTC, on the trading date.
    assert_eq!(
        n(
            "SELECT count(*) FROM ticks WHERE ts = TIMESTAMP '2025-03-03T10:00:00Z' \
           AND date = '2025-03-03'"
        ),
        3
    );
    assert_eq!(
        n(
            "SELECT count(*) FROM ticks WHERE symbol = 'RELIANCE' AND price = 1190.25 \
           AND open = 1180.0 AND high = 1195.5 AND low = 1172.1 AND volume = 8123456 \
           AND bid IS NULL"
        ),
        1
    );
    assert_eq!(
        n("SELECT count(*) FROM ticks WHERE symbol IN ('M&M', 'IDEA.BE')"),
        2,
        "series other than EQ keep distinct symbols"
    );
    assert_eq!(
        n("SELECT count(*) FROM symbols WHERE exchange = 'XNSE' \
           AND timezone = 'Asia/Kolkata' AND session_close = '15:30'"),
        3
    );
}

#[test]
fn udiff_is_recognised_by_its_header_and_closes_at_1530_ist() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(dir.path());
    let f = write_udiff(
        dir.path(),
        "BhavCopy_NSE_CM_0_0_0_20250303_F_0000.csv",
        ROWS,
    );
    let out = ok(
        dir.path(),
        &["ingest", "csv", "--lake", &lake, f.to_str().unwrap()],
    );
    assert!(
        out.contains("(nse-udiff)") || out.contains("nse-udiff"),
        "{out}"
    );
    assert!(
        out.contains("5 rows, 3 ticks, 0 labels, 2 rejected"),
        "{out}"
    );
    check_lake(dir.path(), &lake);
    let rejects = std::fs::read_to_string(
        dir.path()
            .join("BhavCopy_NSE_CM_0_0_0_20250303_F_0000.csv.rejects.csv"),
    )
    .unwrap();
    assert!(rejects.contains(",5,high_below_low,"), "{rejects}");
    assert!(rejects.contains(",6,wrong_schema,"), "{rejects}");
}

#[test]
fn zipped_udiff_gives_the_same_ticks_as_the_plain_file() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(dir.path());
    let name = "BhavCopy_NSE_CM_0_0_0_20250303_F_0000.csv";
    let plain = write_udiff(dir.path(), name, ROWS);
    let bytes = std::fs::read(&plain).unwrap();
    let zipped = zip_of(dir.path(), &format!("{name}.zip"), &[(name, &bytes)]);
    let out = ok(
        dir.path(),
        &[
            "ingest",
            "csv",
            "--format",
            "nse-udiff",
            "--lake",
            &lake,
            zipped.to_str().unwrap(),
        ],
    );
    assert!(
        out.contains("3 ticks") && out.contains("2 rejected"),
        "{out}"
    );
    check_lake(dir.path(), &lake);
    // The plain file adds nothing: the same ticks, content-addressed.
    let again = ok(
        dir.path(),
        &["ingest", "csv", "--lake", &lake, plain.to_str().unwrap()],
    );
    assert!(again.contains("0 files written"), "{again}");
    assert_eq!(
        sql_number(dir.path(), &lake, "SELECT count(*) FROM ticks"),
        3
    );
}

#[test]
fn holiday_file_with_only_a_header_ingests_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(dir.path());
    let f = write_udiff(dir.path(), "holiday.csv", &[]);
    let out = ok(
        dir.path(),
        &["ingest", "csv", "--lake", &lake, f.to_str().unwrap()],
    );
    assert!(
        out.contains("nse-udiff") && out.contains("0 ticks"),
        "{out}"
    );
}

#[test]
fn zips_without_exactly_one_csv_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(dir.path());
    let none = zip_of(dir.path(), "none.zip", &[("readme.txt", b"hello")]);
    let two = zip_of(
        dir.path(),
        "two.zip",
        &[("a.csv", HEADER.as_bytes()), ("b.csv", HEADER.as_bytes())],
    );
    for (f, want) in [(none, "no .csv file"), (two, "2 .csv files")] {
        let out = run(
            dir.path(),
            &["ingest", "csv", "--lake", &lake, f.to_str().unwrap()],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(want), "{err}");
    }
}
