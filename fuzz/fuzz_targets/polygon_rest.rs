#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    stockanomaly_fuzz::polygon_rest(data);
});
