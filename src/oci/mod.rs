//! OCI/Docker layer tar tooling (placeholder: being written).
