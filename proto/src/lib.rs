//! The wattwise gRPC API, package `wattwise.v1` (see `proto/wattwise/v1/wattwise.proto` for field
//! semantics and units).

/// Generated messages, clients (`node_power_client`, `power_reports_client`) and servers
/// (`node_power_server`, `power_reports_server`).
pub mod v1 {
    tonic::include_proto!("wattwise.v1");
}

/// Encoded `FileDescriptorSet` of the API, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("wattwise_descriptor");

pub use tonic_reflection::server::Error as ReflectionError;
use tonic_reflection::server::{v1 as reflection_v1, v1alpha as reflection_v1alpha};

/// Server reflection for the wattwise API and `grpc.health.v1`, in both protocol versions
/// (grpcurl ≤ 1.8 asks v1alpha, newer clients v1), so generic clients can list and call everything.
#[allow(clippy::type_complexity)]
pub fn reflection_services() -> Result<
    (
        reflection_v1::ServerReflectionServer<impl reflection_v1::ServerReflection>,
        reflection_v1alpha::ServerReflectionServer<impl reflection_v1alpha::ServerReflection>,
    ),
    ReflectionError,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reflection_builds_from_the_embedded_descriptors() {
        super::reflection_services().expect("descriptor sets are valid");
    }
}
