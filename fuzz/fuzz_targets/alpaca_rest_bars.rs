#![no_main]
use libfuzzer_sys::fuzz_target;
use stockanomaly::sources::alpaca::rest::AlpacaHistory;

fuzz_target!(|data: &[u8]| {
    stockanomaly_fuzz::alpaca_rest(AlpacaHistory::Bars, data);
});
