//! The real binary, started as an operator would start it.

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

/// Runs `order-api ARGS` with only PATH and `env` set, in an empty directory
/// (so no `.env` is found), and waits at most 30 s for it to exit.
fn run_order_api(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = empty_dir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_order-api"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("order-api starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("waiting").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("order-api {args:?} was still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn empty_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(test_support::unique("order-api-cwd"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Nothing listens on port 9 (discard): a binary that got as far as the
/// database would fail there, with a MongoDB message instead.
const NO_DATABASE: (&str, &str) = (
    "MONGODB_URI",
    "mongodb://127.0.0.1:9/?directConnection=true",
);
const QUICK_DATABASE_TIMEOUT: (&str, &str) = ("MONGODB_SERVER_SELECTION_TIMEOUT_MS", "300");

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn refuses_to_start_with_a_short_jwt_secret() {
    let output = run_order_api(
        &[],
        &[("JWT_SECRET", "short"), NO_DATABASE, QUICK_DATABASE_TIMEOUT],
    );
    let stderr = stderr(&output);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("JWT_SECRET"), "{stderr}");
    assert!(stderr.contains("32"), "{stderr}");
    assert!(
        !stderr.contains("MongoDB"),
        "failed before the database: {stderr}"
    );
}

#[test]
fn refuses_to_start_without_a_jwt_secret() {
    let output = run_order_api(&[], &[NO_DATABASE, QUICK_DATABASE_TIMEOUT]);
    let stderr = stderr(&output);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("JWT_SECRET"), "{stderr}");
    assert!(stderr.contains("32"), "{stderr}");
    assert!(
        !stderr.contains("MongoDB"),
        "failed before the database: {stderr}"
    );
}

/// The control for the two above: in development the secret check passes
/// and the binary goes on to the database, which is not there.
#[test]
fn development_without_a_secret_gets_as_far_as_the_database() {
    let output = run_order_api(
        &[],
        &[
            ("APP_ENV", "development"),
            NO_DATABASE,
            QUICK_DATABASE_TIMEOUT,
            // Start-up waits for the database; give up after a second.
            ("STARTUP_TIMEOUT_SECS", "1"),
        ],
    );
    let stderr = stderr(&output);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("MongoDB"), "{stderr}");
    assert!(!stderr.contains("JWT_SECRET"), "{stderr}");
}

#[test]
fn seed_products_refuses_a_bad_file_before_touching_the_database() {
    let file = empty_dir().join("products.json");
    std::fs::write(
        &file,
        r#"[{"name": "Ok", "sku": "OK-1", "price": 100, "stock": 1},
            {"name": "", "sku": "BAD-1", "price": -5, "stock": 1}]"#,
    )
    .expect("written");
    let path = file.to_str().expect("utf-8 path");
    let output = run_order_api(
        &["seed-products", path],
        &[NO_DATABASE, QUICK_DATABASE_TIMEOUT],
    );
    let stderr = stderr(&output);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("entry 2"), "{stderr}");
    assert!(stderr.contains("BAD-1"), "{stderr}");
    assert!(!stderr.contains("MongoDB"), "{stderr}");
}

#[tokio::test]
async fn seed_products_prints_its_summary() {
    test_support::require_stack().await;
    let database = test_support::unique("seedcli").replace('-', "_");
    let seed_file = concat!(env!("CARGO_MANIFEST_DIR"), "/../seed/products.json");
    let uri = test_support::mongo_uri();
    let output = run_order_api(
        &["seed-products", seed_file],
        &[("MONGODB_URI", &uri), ("MONGODB_DATABASE", &database)],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}\n{stdout}", stderr(&output));
    assert!(
        stdout.contains("seeded 10 products: 10 created, 0 updated, 0 unchanged"),
        "{stdout}"
    );
}

#[tokio::test]
async fn sigterm_finishes_in_flight_work_and_exits_zero() {
    test_support::process::assert_graceful_sigterm(
        env!("CARGO_BIN_EXE_order-api"),
        "/api/health",
        &[
            "shutdown signal received",
            "outbox relay stopped",
            "order-api stopped",
        ],
    )
    .await;
}

/// Every JWT_SECRET and ADMIN_PASSWORD value the repository's deployment
/// files publish: `NAME=value`, `NAME: value` and compose's
/// `${NAME:-value}` forms, and the bench tool's `--admin-password` default.
fn published_in_the_repository() -> Vec<(String, String)> {
    let root = test_support::workspace_root();
    let files = [
        ".env.example",
        "docker-compose.yml",
        "deploy/k8s/overlays/local/kustomization.yaml",
        "scripts/bench.sh",
        "bench/src/main.rs",
    ];
    let assignment = regex_lite::Regex::new(
        r#"(JWT_SECRET|ADMIN_PASSWORD)\s*[=:]\s*(?:\$\{[A-Z_]+:-)?['"]?([^\s}'"]+)"#,
    )
    .expect("regex");
    let bench_flags = [
        r#"--admin-password '([^']+)'"#,
        r#"default_value = "([^"]+)"\)\]\s*admin_password"#,
    ]
    .map(|r| regex_lite::Regex::new(r).expect("regex"));
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(root.join(file)).expect("a deployment file");
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            if let Some(c) = assignment.captures(line) {
                found.push((format!("{file}: {}", &c[1]), c[2].to_string()));
            }
        }
        for c in bench_flags.iter().flat_map(|r| r.captures_iter(&text)) {
            found.push((format!("{file}: admin password"), c[1].to_string()));
        }
    }
    found
}

#[test]
fn every_secret_the_repository_publishes_is_on_the_refused_list() {
    let published = published_in_the_repository();
    let names: Vec<&str> = published.iter().map(|(at, _)| at.as_str()).collect();
    for wanted in [
        ".env.example: JWT_SECRET",
        ".env.example: ADMIN_PASSWORD",
        "docker-compose.yml: JWT_SECRET",
        "docker-compose.yml: ADMIN_PASSWORD",
        "deploy/k8s/overlays/local/kustomization.yaml: JWT_SECRET",
        "bench/src/main.rs: admin password",
    ] {
        assert!(names.contains(&wanted), "{wanted} was read: {published:?}");
    }
    for (at, value) in &published {
        assert!(
            order_api::config::PUBLISHED_SECRETS.contains(&value.as_str()),
            "{at} publishes {value:?}, which PUBLISHED_SECRETS (order-api/src/config.rs) lacks"
        );
    }
}

#[test]
fn outside_development_no_published_secret_is_accepted() {
    let strong_secret = "a-fresh-secret-nobody-has-read-0123456789";
    for app_env in [Some("production"), None] {
        for secret in order_api::config::PUBLISHED_SECRETS {
            let mut env = vec![("JWT_SECRET", *secret), NO_DATABASE, QUICK_DATABASE_TIMEOUT];
            env.extend(app_env.map(|e| ("APP_ENV", e)));
            for args in [&["check-config"][..], &[][..]] {
                let output = run_order_api(args, &env);
                let stderr = stderr(&output);
                assert!(!output.status.success(), "{args:?} {app_env:?}: {stderr}");
                // One too short to be a secret is refused by that rule first.
                let why = if secret.len() >= 32 {
                    "JWT_SECRET is a value published"
                } else {
                    "JWT_SECRET is 12 bytes"
                };
                assert!(stderr.contains(why), "{stderr}");
            }
            let mut env = vec![
                ("JWT_SECRET", strong_secret),
                ("ADMIN_EMAIL", "admin@shop.test"),
                ("ADMIN_PASSWORD", *secret),
                NO_DATABASE,
                QUICK_DATABASE_TIMEOUT,
            ];
            env.extend(app_env.map(|e| ("APP_ENV", e)));
            let output = run_order_api(&["check-config"], &env);
            let stderr = stderr(&output);
            assert!(!output.status.success(), "{stderr}");
            assert!(
                stderr.contains("ADMIN_PASSWORD is a value published")
                    || stderr.contains("ADMIN_PASSWORD must be 8 to 128"),
                "{stderr}"
            );
        }
    }
    let short = run_order_api(
        &["check-config"],
        &[
            ("APP_ENV", "development"),
            ("ADMIN_EMAIL", "admin@shop.test"),
            ("ADMIN_PASSWORD", "short"),
            NO_DATABASE,
        ],
    );
    assert!(!short.status.success());
    assert!(
        stderr(&short).contains("ADMIN_PASSWORD must be 8 to 128"),
        "{}",
        stderr(&short)
    );
}

/// The control: in development the published values pass the check, so
/// `make run`, compose and the local overlay keep working.
#[test]
fn development_accepts_the_published_values() {
    let output = run_order_api(
        &["check-config"],
        &[
            ("APP_ENV", "development"),
            ("JWT_SECRET", order_api::config::PUBLISHED_SECRETS[0]),
            ("ADMIN_EMAIL", "admin@shop.test"),
            ("ADMIN_PASSWORD", "ChangeMe123!"),
            NO_DATABASE,
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
}
