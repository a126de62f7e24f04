//! What a real MongoDB replica set answers and the local server never does
//! by itself (an election, a featureCompatibilityVersion refusal, a write
//! concern error, a slow statement), driven by the server's own
//! `configureFailPoint: failCommand` (the stack starts it with
//! `--enable-test-commands`). Nothing is faked: the driver talks to the
//! real server, which answers as told.
//!
//! The fail point is one per server, so tests that set it take turns
//! ([`FailPoint`] holds the turn); each matches only the clients of one
//! `appName` ([`named_uri`]), so tests that do not set it run on unhurt.

use std::sync::atomic::{AtomicBool, Ordering};

use mongodb::bson::{Bson, Document, doc};

use crate::mongo_uri;

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The test stack's URI with the client name `app_name`: a service given it
/// is the one a [`FailPoint`] for `app_name` hits.
pub fn named_uri(app_name: &str) -> String {
    format!("{}&appName={app_name}", mongo_uri())
}

/// `failCommand` set until [`FailPoint::off`]; dropped without it, the test
/// has failed, and the fail point is switched off by the next test's set.
pub struct FailPoint {
    admin: mongodb::Database,
    off: AtomicBool,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// Sets `failCommand` for the commands `commands` of the clients named
/// `app_name`: `times` of them (`None`: every one until switched off) are
/// answered as `data` says (`errorCode`, `errmsg`, `errorLabels`,
/// `writeConcernError`, `blockConnection` + `blockTimeMS`, ...).
pub async fn fail(
    app_name: &str,
    commands: &[&str],
    times: Option<u32>,
    data: Document,
) -> FailPoint {
    let turn = TURN.lock().await;
    let client = mongodb::Client::with_uri_str(mongo_uri())
        .await
        .expect("a client for configureFailPoint");
    let admin = client.database("admin");
    let mode: Bson = match times {
        Some(times) => doc! { "times": i64::from(times) }.into(),
        None => "alwaysOn".into(),
    };
    let mut data = data;
    data.insert("failCommands", commands);
    data.insert("appName", app_name);
    admin
        .run_command(doc! { "configureFailPoint": "failCommand", "mode": mode, "data": data })
        .await
        .expect("configureFailPoint failCommand (is the stack's MongoDB started with --enable-test-commands?)");
    FailPoint {
        admin,
        off: AtomicBool::new(false),
        _turn: turn,
    }
}

impl FailPoint {
    /// Switches the fail point off and gives the turn to the next test.
    pub async fn off(self) {
        self.admin
            .run_command(doc! { "configureFailPoint": "failCommand", "mode": "off" })
            .await
            .expect("configureFailPoint off");
        self.off.store(true, Ordering::Relaxed);
    }
}

impl Drop for FailPoint {
    fn drop(&mut self) {
        if !self.off.load(Ordering::Relaxed) {
            // A panicking test: the next `fail` overwrites it; until then
            // only this test's clients are hit.
            eprintln!("a failCommand fail point was left on (the test failed before `off`)");
        }
    }
}
