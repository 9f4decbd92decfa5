#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cargo_devmesh::fuzzing::target("registry")(data));
