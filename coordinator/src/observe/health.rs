//! The standard gRPC health service (`grpc.health.v1`) as an observer: the
//! service reports SERVING from the moment the server listens, and
//! NOT_SERVING once the run has ended, while the coordinator drains, so a
//! readiness probe stops sending traffic to a run that takes none.

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::{Observer, RunEvent};
use crate::error::Result;

/// The name clients and probes ask about besides `""` (the whole server).
pub const SERVICE: &str = "lazyavg.v1.Coordinator";

/// Flips the health status at the end of the run.
#[derive(Debug)]
pub struct Health {
    reporter: HealthReporter,
}

impl Health {
    /// Marks the coordinator SERVING and keeps `reporter` to mark it
    /// NOT_SERVING when the run ends.
    pub async fn serving(reporter: HealthReporter) -> Self {
        set(&reporter, ServingStatus::Serving).await;
        Health { reporter }
    }
}

async fn set(reporter: &HealthReporter, status: ServingStatus) {
    for service in ["", SERVICE] {
        reporter.set_service_status(service, status).await;
    }
}

impl Observer for Health {
    fn observe(&mut self, event: &RunEvent<'_>) -> Result<()> {
        if let RunEvent::RunEnded { .. } = event {
            // The reporter is async; the driver's runtime carries it out.
            let reporter = self.reporter.clone();
            tokio::spawn(async move { set(&reporter, ServingStatus::NotServing).await });
        }
        Ok(())
    }
}
