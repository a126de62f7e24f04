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
