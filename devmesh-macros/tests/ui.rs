//! What `#[devmesh::test]` accepts, and the errors it gives for what it
//! does not (each next to the mistake it names).

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass-*.rs");
    cases.compile_fail("tests/ui/fail-*.rs");
}
