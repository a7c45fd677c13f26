//! `skiff check --manifests PATH...`: reads Kubernetes manifests (files,
//! or directories of `*.yaml`/`*.yml`) offline, as the gateway role would
//! read the same objects from the API server, and prints what each of
//! skiff's Gateways would serve and every problem its status would report.

use std::path::{Path, PathBuf};

use skiff_gateway::World;

/// The files under `paths` (directories: their YAML files, sorted).
fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries =
                std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// Reads every object (a namespaced one without a namespace goes in
/// `namespace`, as `kubectl apply -n` puts it); an object that cannot be
/// read is a problem named by its file and line.
fn read(
    file: &Path,
    namespace: &str,
    world: &mut World,
    problems: &mut Vec<String>,
) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let objects =
        skiff_gateway::manifests::objects(&text).map_err(|e| format!("{}:{e}", file.display()))?;
    for (line, mut object) in objects {
        let cluster_scoped = matches!(object["kind"].as_str(), Some("GatewayClass" | "Namespace"));
        if !cluster_scoped
            && object["metadata"]["namespace"]
                .as_str()
                .is_none_or(str::is_empty)
        {
            object["metadata"]["namespace"] = namespace.into();
        }
        let secret = (object["kind"] == "Secret").then(|| {
            let text = |f: &str| object["metadata"][f].as_str().unwrap_or("").to_string();
            (text("namespace"), text("name"))
        });
        if let Err(e) = world.apply(object) {
            problems.push(format!("{}:{line}: {e}", file.display()));
        } else if let Some(key) = secret {
            // Loaded as the gateway would; a listener using it says why not.
            crate::gateway::check_secret(world, &key, None);
        }
    }
    Ok(())
}

/// Runs the check; the text to print and whether it found no problem.
pub fn check(paths: &[PathBuf], namespace: &str) -> Result<(String, bool), String> {
    // The manifests are all there is: a Secret not among them is missing.
    let mut world = World::default();
    let mut unreadable = Vec::new();
    for file in files(paths)? {
        read(&file, namespace, &mut world, &mut unreadable)?;
    }
    let report = skiff_gateway::report::check(&world, skiff_gateway::CONTROLLER);
    let mut text = report.text;
    for p in &unreadable {
        text.push_str(&format!("  problem: {p}\n"));
    }
    let problems = report.problems + unreadable.len();
    text.push_str(&match problems {
        0 => "ok\n".to_string(),
        1 => "1 problem\n".to_string(),
        n => format!("{n} problems\n"),
    });
    Ok((text, problems == 0))
}
