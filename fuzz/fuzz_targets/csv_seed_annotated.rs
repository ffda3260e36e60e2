#![no_main]
use libfuzzer_sys::fuzz_target;
use stockanomaly::sources::csv::CsvFormat;

fuzz_target!(|data: &[u8]| {
    stockanomaly_fuzz::csv(CsvFormat::SeedAnnotated, data);
});
