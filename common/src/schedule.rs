//! Work run on a cron schedule (with seconds: `"*/5 * * * * *"`), on
//! tokio-cron-scheduler: the relay's safety-net sweep, the expiry sweep.

use std::future::Future;

use anyhow::Context;
use tokio_cron_scheduler::Job;
pub use tokio_cron_scheduler::JobScheduler;

/// Starts running `job` on `schedule`. `setting` names where the schedule
/// came from, for the error when it does not parse. Stop it with
/// `JobScheduler::shutdown`.
pub async fn every<F, Fut>(setting: &str, schedule: &str, job: F) -> anyhow::Result<JobScheduler>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let scheduler = JobScheduler::new()
        .await
        .with_context(|| format!("creating the scheduler for {setting}"))?;
    let job = Job::new_async(schedule, move |_id, _scheduler| Box::pin(job()))
        .with_context(|| format!("{setting} {schedule:?} is not a valid cron schedule"))?;
    scheduler
        .add(job)
        .await
        .with_context(|| format!("scheduling {setting}"))?;
    scheduler
        .start()
        .await
        .with_context(|| format!("starting the scheduler for {setting}"))?;
    Ok(scheduler)
}

/// Stops a scheduler started by `every`, logging (not failing) if it will
/// not: this runs on the way out.
pub async fn stop(mut scheduler: JobScheduler, setting: &str) {
    if let Err(e) = scheduler.shutdown().await {
        tracing::warn!(error = %e, setting, "stopping a scheduler");
    }
}
