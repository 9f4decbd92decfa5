#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| devmesh_fuzz::bounded("registry", data));
