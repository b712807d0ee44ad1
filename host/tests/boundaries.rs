//! The boundaries that keep the tree easy to change (`../shared/DESIGN.md`),
//! checked on the source itself: a plain read of each file's `use crate::`
//! lines (and of where programs are run and `/proc` is written). A forbidden
//! import that comes back fails here, naming the file and the line.

use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every source file, by its path under `src/` (`agent/node.rs`), without
/// its `mod tests`.
fn sources() -> Vec<(String, String)> {
    let mut v = vec![];
    files(&src(), &mut v);
    v.sort();
    v.into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(src())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            // A file's unit tests may reach across a boundary to check
            // behaviour end to end (a plan change as nft text): the rules
            // are for the code that ships.
            let shipped = match text.find("\n#[cfg(test)]\nmod tests") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            (rel, shipped)
        })
        .collect()
}

/// The top-level modules a file's `use crate::...` lines name (also in
/// braces: `use crate::{a, b::c}`), with the line.
fn uses(text: &str) -> Vec<(String, usize, String)> {
    let mut out = vec![];
    let mut lines = text.lines().enumerate().peekable();
    while let Some((n, line)) = lines.next() {
        let t = line.trim_start();
        let t = t.strip_prefix("pub ").unwrap_or(t);
        let t = t.strip_prefix("pub(crate) ").unwrap_or(t);
        let Some(rest) = t.strip_prefix("use crate::") else {
            continue;
        };
        // A use over several lines ends at its `;`.
        let mut whole = rest.to_string();
        while !whole.contains(';') {
            match lines.next() {
                Some((_, l)) => whole.push_str(l.trim()),
                None => break,
            }
        }
        let whole = whole.split(';').next().unwrap_or_default().to_string();
        let tops: Vec<String> = if let Some(inner) = whole.strip_prefix('{') {
            // The paths at the outermost level of the braces.
            let mut parts = vec![String::new()];
            let mut depth = 0;
            for c in inner.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => parts.push(String::new()),
                    _ if depth == 0 => parts.last_mut().expect("one").push(c),
                    _ => {}
                }
            }
            parts
                .iter()
                .map(|s| s.trim().split("::").next().unwrap_or_default().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        } else {
            vec![whole.split("::").next().unwrap_or_default().to_string()]
        };
        for top in tops {
            out.push((top, n + 1, line.trim().to_string()));
        }
    }
    out
}

fn in_folder(file: &str, folders: &[&str]) -> bool {
    folders
        .iter()
        .any(|f| file.starts_with(&format!("{f}/")) || file == format!("{f}.rs"))
}

#[test]
fn nothing_outside_the_lab_imports_it() {
    let mut bad = vec![];
    for (file, text) in sources() {
        // The CLI names the lab's subcommand; main runs the CLI.
        if in_folder(&file, &["lab"])
            || file == "cli/mod.rs"
            || file == "main.rs"
            || file == "lib.rs"
        {
            continue;
        }
        for (top, n, line) in uses(&text) {
            if top == "lab" {
                bad.push(format!("{file}:{n}: {line}"));
            }
        }
        if text.contains("crate::lab::") {
            bad.push(format!("{file}: names crate::lab:: outside a use line"));
        }
    }
    assert!(
        bad.is_empty(),
        "the lab is imported outside lab/:\n{}",
        bad.join("\n")
    );
}

/// The model and the plan are pure: they import only the vocabulary below
/// them (contract, k8s, util), and the plan the model. No runtime, registry,
/// datapath, agent or lab.
#[test]
fn the_model_and_the_plan_import_only_the_vocabulary_below_them() {
    let mut bad = vec![];
    for (file, text) in sources() {
        let allowed: &[&str] = if in_folder(&file, &["model"]) {
            &["contract", "k8s", "util", "model"]
        } else if in_folder(&file, &["plan"]) {
            &["contract", "k8s", "util", "model", "plan"]
        } else if in_folder(&file, &["dns"]) {
            // The DNS server answers from the model; the agent gives it
            // its addresses and the datapath's link.
            &["k8s", "util", "model", "dns"]
        } else {
            continue;
        };
        for (top, n, line) in uses(&text) {
            if !allowed.contains(&top.as_str()) {
                bad.push(format!("{file}:{n}: {line}"));
            }
        }
        for forbidden in ["runtime", "registry", "datapath", "agent", "lab"] {
            if text.contains(&format!("crate::{forbidden}::")) {
                bad.push(format!(
                    "{file}: names crate::{forbidden}:: outside a use line"
                ));
            }
        }
    }
    assert!(bad.is_empty(), "forbidden imports:\n{}", bad.join("\n"));
}

#[test]
fn the_contract_is_a_leaf() {
    let mut bad = vec![];
    for (file, text) in sources() {
        if !in_folder(&file, &["contract"]) {
            continue;
        }
        for (top, n, line) in uses(&text) {
            if top != "contract" {
                bad.push(format!("{file}:{n}: {line}"));
            }
        }
    }
    assert!(bad.is_empty(), "the contract imports:\n{}", bad.join("\n"));
}

#[test]
fn the_datapath_imports_no_runtime() {
    let mut bad = vec![];
    for (file, text) in sources() {
        if !in_folder(&file, &["datapath"]) {
            continue;
        }
        for (top, n, line) in uses(&text) {
            if matches!(top.as_str(), "runtime" | "registry" | "agent" | "lab") {
                bad.push(format!("{file}:{n}: {line}"));
            }
        }
    }
    assert!(bad.is_empty(), "the datapath imports:\n{}", bad.join("\n"));
}

/// Outside the datapath, only the lab's launcher code and the CLI run
/// programs (agents, kubelets, the control plane), and nothing writes to
/// `/proc`.
#[test]
fn side_effects_live_in_the_datapath() {
    let mut bad = vec![];
    for (file, text) in sources() {
        if in_folder(&file, &["datapath"]) {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            let t = line.trim_start();
            if t.starts_with("//") {
                continue;
            }
            let spawns = t.contains("Command::new(");
            if spawns && !in_folder(&file, &["lab", "cli"]) {
                bad.push(format!("{file}:{}: runs a program: {}", n + 1, line.trim()));
            }
            if t.contains("\"/proc/sys") {
                bad.push(format!("{file}:{}: writes /proc: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "side effects outside datapath/:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_uses_reader_reads_braces_and_lines() {
    let u = uses(
        "use crate::{model::Role, plan::{Change, Fragment}};\npub use crate::lab::layout;\nuse crate::datapath::nft::{\n    Nft,\n};\n",
    );
    let tops: Vec<&str> = u.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(tops, ["model", "plan", "lab", "datapath"]);
}
