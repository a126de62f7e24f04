//! Readiness: can this service do its work right now? Checks MongoDB and
//! SQS, each bounded by a short timeout, and names what is down. Liveness
//! (`/health`) stays a constant answer; this is what a load balancer or
//! docker-compose should wait on.

use std::{collections::BTreeMap, time::Duration};

use mongodb::{Database, bson::doc};
use serde::Serialize;

#[derive(Clone)]
pub struct ReadinessProbe {
    db: Database,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    timeout: Duration,
}

#[derive(Debug, Serialize)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: &'static str,
    /// Each dependency: `ok`, or why not.
    pub checks: BTreeMap<&'static str, String>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.status == "ready"
    }

    /// The report as both services answer it.
    pub fn to_json(&self, service: &str) -> serde_json::Value {
        serde_json::json!({ "service": service, "status": self.status, "checks": self.checks })
    }
}

impl ReadinessProbe {
    pub fn new(db: Database, sqs: aws_sdk_sqs::Client, queue_url: String) -> Self {
        ReadinessProbe {
            db,
            sqs,
            queue_url,
            timeout: Duration::from_secs(2),
        }
    }

    /// Checks both dependencies at once; never takes much over the timeout.
    pub async fn check(&self) -> Readiness {
        let mongo = async {
            self.db
                .run_command(doc! { "ping": 1 })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let sqs = async {
            self.sqs
                .get_queue_attributes()
                .queue_url(&self.queue_url)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())
        };
        let (mongo, sqs) = tokio::join!(self.bounded(mongo), self.bounded(sqs));
        let ready = mongo.is_ok() && sqs.is_ok();
        let describe = |r: Result<(), String>| r.map_or_else(|e| e, |()| "ok".to_string());
        Readiness {
            status: if ready { "ready" } else { "unavailable" },
            checks: BTreeMap::from([("mongodb", describe(mongo)), ("sqs", describe(sqs))]),
        }
    }

    async fn bounded(&self, check: impl Future<Output = Result<(), String>>) -> Result<(), String> {
        tokio::time::timeout(self.timeout, check)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)))
    }
}
