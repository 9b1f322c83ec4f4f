//! What faultd serves beside its API so that tools can watch and explore it: the standard
//! gRPC health service (`grpc.health.v1.Health`) and server reflection
//! (`grpc.reflection.v1.ServerReflection`), which lets any gRPC client (grpcurl, Postman, a
//! test in another language) list the services and build requests without the protos.
//!
//! Both are served behind the same access gate as the API (see the README).

use tonic::server::NamedService;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};

use crate::api::FaultApi;
use crate::proto::fault_service_server::FaultServiceServer;

/// The API's service name, as health checks and reflection know it.
pub const FAULT_SERVICE: &str = <FaultServiceServer<FaultApi> as NamedService>::NAME;

/// The health and reflection services, cloned onto each listener.
pub struct Observe<R> {
    reporter: HealthReporter,
    health: HealthServer<HealthService>,
    reflection: ServerReflectionServer<R>,
}

/// Health (SERVING for the server, `""`, and for [`FAULT_SERVICE`]) and reflection over
/// every proto faultd serves and the health service's own.
pub async fn observe() -> anyhow::Result<Observe<impl ServerReflection>> {
    let reporter = HealthReporter::new();
    reporter
        .set_service_status(FAULT_SERVICE, ServingStatus::Serving)
        .await;
    let health = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    Ok(Observe {
        reporter,
        health,
        reflection,
    })
}

impl<R: ServerReflection> Observe<R> {
    /// Adds both services to a listener's router.
    pub fn add_to<L>(&self, router: Router<L>) -> Router<L> {
        router
            .add_service(self.health.clone())
            .add_service(self.reflection.clone())
    }

    /// From now on health checks answer NOT_SERVING (shutdown): load balancers and
    /// watchers on an open connection see the daemon going before it is gone.
    pub async fn not_serving(&self) {
        for service in ["", FAULT_SERVICE] {
            self.reporter
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn the_descriptor_set_describes_the_api() {
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("a valid descriptor set");
        let services: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| {
                f.service
                    .iter()
                    .map(move |s| format!("{}.{}", f.package(), s.name()))
            })
            .collect();
        assert!(
            services.contains(&FAULT_SERVICE.to_string()),
            "{services:?}"
        );
        assert_eq!(FAULT_SERVICE, "faultd.v1.FaultService");
    }

    #[tokio::test]
    async fn health_starts_serving_and_goes_not_serving() {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_server::Health as _;
        let observe = observe().await.unwrap();
        let service = HealthService::from_health_reporter(observe.reporter.clone());
        let status = |name: &str| {
            let request = tonic::Request::new(HealthCheckRequest {
                service: name.into(),
            });
            let service = &service;
            async move { service.check(request).await.unwrap().into_inner().status }
        };
        let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
        let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
        assert_eq!(status("").await, serving);
        assert_eq!(status(FAULT_SERVICE).await, serving);
        observe.not_serving().await;
        assert_eq!(status("").await, not_serving);
        assert_eq!(status(FAULT_SERVICE).await, not_serving);
    }
}
