//! `health`: asks a `grpc.health.v1` server for a service's status (usable
//! as a container or Kubernetes exec probe).

use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::{AppError, AppResult};

/// `health`: asks a `grpc.health.v1` server for `service`'s status.
/// Returns the status name; `Ok(true)` only for SERVING.
///
/// # Errors
/// If the server cannot be reached within `timeout` or does not know `service`.
pub async fn health(
    addr: &str,
    service: &str,
    timeout: Duration,
    tls_ca: Option<Vec<u8>>,
) -> AppResult<(bool, String)> {
    let failed = |why: String| AppError::Health {
        addr: addr.to_string(),
        why,
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(addr.to_string())
        .map_err(|e| {
            failed(format!(
                "not an address: {}",
                common::logging::error_chain(&e)
            ))
        })?
        .connect_timeout(timeout)
        .timeout(timeout);
    if let Some(ca) = tls_ca {
        endpoint = endpoint
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            )
            .map_err(|e| failed(format!("TLS: {}", common::logging::error_chain(&e))))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        failed(format!(
            "cannot reach it: {}",
            common::logging::error_chain(&e)
        ))
    })?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| failed(format!("{:?}: {}", s.code(), s.message())))?;
    let status =
        ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown);
    Ok((
        status == ServingStatus::Serving,
        status.as_str_name().to_string(),
    ))
}
