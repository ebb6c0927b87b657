//! `health`: asks a `grpc.health.v1` server for a service's status (usable
//! as a container or Kubernetes exec probe).

use std::time::Duration;

use anyhow::Context;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

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
) -> anyhow::Result<(bool, String)> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(addr.to_string())
        .with_context(|| format!("invalid address {addr:?}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    if let Some(ca) = tls_ca {
        endpoint = endpoint.tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
        )?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach {addr}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{addr}: {:?}: {}", s.code(), s.message()))?;
    let status =
        ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown);
    Ok((
        status == ServingStatus::Serving,
        status.as_str_name().to_string(),
    ))
}
