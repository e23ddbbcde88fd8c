//! Writes the CRD YAML generated from the Rust types into `crds/` and the Helm chart, or with
//! `--check` fails when the committed files differ from what the types generate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs: [PathBuf; 2] = [root.join("yaml"), root.join("../charts/webaccel/crds")];
    let files = match webaccel_crds::v1alpha1::crd_files() {
        Ok(files) => files,
        Err(e) => {
            eprintln!("crdgen: cannot serialise the CRDs: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stale = Vec::new();
    for dir in &dirs {
        for (name, yaml) in &files {
            let path = dir.join(name);
            if check {
                if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                    stale.push(path.display().to_string());
                }
            } else if let Err(e) =
                std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, yaml))
            {
                eprintln!("crdgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if !stale.is_empty() {
        eprintln!(
            "crdgen: out of date: {}\nrun `cargo run -p webaccel-crds --bin crdgen`",
            stale.join(", ")
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
