//! Lints as tests (STYLE.md §10): the crate's sources stay under the file
//! size limit, carry no placeholders, and justify every `unwrap`/`expect`
//! with a comment just above.

use std::fs;
use std::path::{Path, PathBuf};

/// STYLE.md: "Keep files under about 800 lines".
const FILE_LINES_MAX: usize = 800;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn sources_are_tidy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    sources(&root.join("tests"), &mut files);
    assert!(files.len() > 10, "found the sources");
    let placeholders = [
        concat!("todo", "!("),
        concat!("unimplemented", "!("),
        concat!("dbg", "!("),
    ];
    let mut problems = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).expect("utf-8 source");
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() > FILE_LINES_MAX {
            problems.push(format!("{}: {} lines", file.display(), lines.len()));
        }
        for (index, line) in lines.iter().enumerate() {
            if placeholders.iter().any(|p| line.contains(p)) {
                problems.push(format!("{}:{}: placeholder", file.display(), index + 1));
            }
        }
        // Library code only: tests may unwrap freely.
        if !file.starts_with(root.join("src")) {
            continue;
        }
        for (index, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains(".unwrap()") || code.contains(".expect(") {
                let justified = lines[index.saturating_sub(3)..index]
                    .iter()
                    .any(|l| l.trim_start().starts_with("//"));
                if !justified {
                    problems.push(format!(
                        "{}:{}: unexplained unwrap",
                        file.display(),
                        index + 1
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let lib = fs::read_to_string(root.join("src/lib.rs")).expect("lib.rs");
    assert!(
        lib.starts_with("//! "),
        "lib.rs opens with the crate paragraph"
    );
    assert!(lib.contains("#![warn(missing_docs)]"));
}
