//! The settings each way of running the services gives them — `.env.example`
//! (`make run`), docker-compose.yml and the Kubernetes manifests — are names
//! the services read, and the services accept their values: no drift between
//! the three and the code.
//!
//! What a service reads is asked of the service itself: `check-config` reads
//! and checks its configuration without connecting to anything and lists
//! every setting it looked up. It runs with exactly the file's settings (and
//! PATH), in an empty directory, so no `.env` is picked up.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use base64::Engine;
use serde_yaml_ng::Value;

type Settings = BTreeMap<String, String>;

const SERVICES: [&str; 2] = ["order-api", "order-processor"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// The service binaries `cargo test --workspace` built beside this test.
fn binary(service: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("this test's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/..");
    let binary = dir.join(service);
    assert!(
        binary.is_file(),
        "{} is not built: run `cargo build --workspace --bins` (make test builds every target)",
        binary.display()
    );
    binary
}

/// `service check-config` with exactly `settings`: the names it read.
/// Panics with its output when it refuses the configuration.
fn names_read(service: &str, settings: &Settings, source: &str) -> BTreeSet<String> {
    let dir = std::env::temp_dir().join(test_support::unique("check-config"));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let output = Command::new(binary(service))
        .arg("check-config")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(settings)
        .current_dir(&dir)
        .output()
        .expect("check-config runs");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{service} refuses the settings of {source}:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let read: BTreeSet<String> = stdout
        .lines()
        .filter_map(|line| match line.split_once(' ') {
            Some((name, "set" | "default")) if is_setting_name(name) => Some(name.to_string()),
            _ => None,
        })
        .collect();
    assert!(
        read.contains("MONGODB_URI"),
        "{service} check-config listed no settings:\n{stdout}"
    );
    read
}

fn is_setting_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The names in `given` that `read` does not contain.
fn unread<'a>(given: impl IntoIterator<Item = &'a String>, read: &BTreeSet<String>) -> Vec<String> {
    given
        .into_iter()
        .filter(|name| !read.contains(*name))
        .cloned()
        .collect()
}

fn env_example() -> (Settings, BTreeSet<String>) {
    let path = repo().join(".env.example");
    let settings = dotenvy::from_path_iter(&path)
        .expect(".env.example exists")
        .collect::<Result<Settings, _>>()
        .expect(".env.example parses");
    // `# NAME=...` lines document a setting left at its default.
    let text = std::fs::read_to_string(&path).expect(".env.example reads");
    let commented = text
        .lines()
        .filter_map(|line| line.strip_prefix("# ")?.split_once('='))
        .map(|(name, _)| name.to_string())
        .filter(|name| is_setting_name(name));
    let documented = settings.keys().cloned().chain(commented).collect();
    (settings, documented)
}

/// `${NAME:-default}` as compose fills it in with NAME unset: the default.
fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').expect("a closed ${...}");
        let default = after[..end].split_once(":-").map_or("", |(_, d)| d);
        out.push_str(default);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("a setting's value is not a scalar: {other:?}"),
    }
}

fn compose_environment(service: &str) -> Settings {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).expect("compose file");
    let mut compose: Value = serde_yaml_ng::from_str(&text).expect("compose parses");
    compose.apply_merge().expect("compose's merge keys");
    let environment = compose["services"][service]["environment"]
        .as_mapping()
        .unwrap_or_else(|| panic!("docker-compose.yml: no environment for {service}"));
    environment
        .iter()
        .map(|(name, value)| (scalar(name), interpolate(&scalar(value))))
        .collect()
}

/// `kubectl kustomize dir`: the rendered resources.
fn kustomize(dir: &str) -> Vec<Value> {
    let output = Command::new("kubectl")
        .args(["kustomize", dir])
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("kubectl (1.32 ships on the machine image) did not run: {e}"));
    assert!(
        output.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8 YAML");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).expect("a YAML document"))
        .collect()
}

/// What a Deployment's container gets: its `env` and every ConfigMap and
/// Secret its `envFrom` names (those rendered here; `optional` ones and a
/// Secret production creates itself may be absent).
fn deployment_settings(resources: &[Value], service: &str) -> Settings {
    let named = |kind: &str, name: &str| {
        resources
            .iter()
            .find(|r| r["kind"] == kind && r["metadata"]["name"].as_str() == Some(name))
    };
    let deployment = named("Deployment", service)
        .unwrap_or_else(|| panic!("no Deployment {service} in the manifests"));
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    let container = containers
        .iter()
        .find(|c| c["name"] == service)
        .unwrap_or_else(|| panic!("Deployment {service} has no container {service}"));
    let mut settings = Settings::new();
    for from in container["envFrom"].as_sequence().into_iter().flatten() {
        if let Some(name) = from["configMapRef"]["name"].as_str()
            && let Some(map) = named("ConfigMap", name)
        {
            for (key, value) in map["data"].as_mapping().into_iter().flatten() {
                settings.insert(scalar(key), scalar(value));
            }
        }
        if let Some(name) = from["secretRef"]["name"].as_str()
            && let Some(secret) = named("Secret", name)
        {
            for (key, value) in secret["data"].as_mapping().into_iter().flatten() {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(scalar(value))
                    .expect("a Secret's data is base64");
                settings.insert(scalar(key), String::from_utf8(decoded).expect("UTF-8"));
            }
            for (key, value) in secret["stringData"].as_mapping().into_iter().flatten() {
                settings.insert(scalar(key), scalar(value));
            }
        }
    }
    for var in container["env"].as_sequence().into_iter().flatten() {
        let name = var["name"].as_str().expect("an env entry's name");
        settings.insert(
            name.to_string(),
            var["value"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_default(),
        );
    }
    settings
}

#[test]
fn every_setting_a_deployment_gives_is_one_the_services_read_and_accept() {
    let (example, documented) = env_example();
    let mut read_by = BTreeMap::new();
    for service in SERVICES {
        // `make run` starts both with .env.example when there is no .env.
        read_by.insert(service, names_read(service, &example, ".env.example"));
    }
    let read_by_any: BTreeSet<String> = read_by.values().flatten().cloned().collect();

    let mut problems = Vec::new();
    let nobody_reads = unread(example.keys(), &read_by_any);
    if !nobody_reads.is_empty() {
        problems.push(format!(
            ".env.example sets what no service reads: {nobody_reads:?}"
        ));
    }
    let undocumented = unread(&read_by_any, &documented);
    if !undocumented.is_empty() {
        problems.push(format!(
            ".env.example does not name these settings: {undocumented:?}"
        ));
    }

    let local = kustomize("deploy/k8s/overlays/local");
    let base = kustomize("deploy/k8s/base");
    for service in SERVICES {
        let read = &read_by[service];
        let compose = compose_environment(service);
        names_read(service, &compose, "docker-compose.yml");
        let stray = unread(compose.keys(), read);
        if !stray.is_empty() {
            problems.push(format!(
                "docker-compose.yml gives {service} what it does not read: {stray:?}"
            ));
        }
        // The local overlay is complete (its Secret is generated): the
        // service must accept it as it is.
        let overlay = deployment_settings(&local, service);
        names_read(service, &overlay, "deploy/k8s/overlays/local");
        let stray = unread(overlay.keys(), read);
        if !stray.is_empty() {
            problems.push(format!(
                "deploy/k8s/overlays/local gives {service} what it does not read: {stray:?}"
            ));
        }
        // The base's Secret is production's own: only its names are checked.
        let stray = unread(deployment_settings(&base, service).keys(), read);
        if !stray.is_empty() {
            problems.push(format!(
                "deploy/k8s/base gives {service} what it does not read: {stray:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
