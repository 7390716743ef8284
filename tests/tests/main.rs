//! Every end-to-end test, in one binary: a module per area. Filter by module, e.g.
//! `cargo test -p copilot-e2e --test main trust::`. Cargo builds only this file (`autotests =
//! false`), so a new file here must be declared below; `every_file_here_is_a_module` checks it.

mod e2e;
mod hostile;
mod hypotheses;
mod incidents;
mod observability;
mod rebuild;
mod slack;
mod tasks;
mod tokens;
mod trust;
mod workers;

#[test]
fn every_file_here_is_a_module() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let main = std::fs::read_to_string(dir.join("main.rs")).unwrap();
    let declared: Vec<&str> = main
        .lines()
        .filter_map(|l| l.strip_prefix("mod ")?.strip_suffix(';'))
        .collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().is_some_and(|e| e == "rs") && name != "main" {
            assert!(
                declared.contains(&name),
                "tests/tests/{name}.rs is not built: declare `mod {name};` in tests/tests/main.rs"
            );
        }
    }
}
