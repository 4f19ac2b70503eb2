//! Unit tests of the model, validation and planner.

mod api_tests;
mod lattice_tests;
mod limits_tests;
mod model_tests;
mod planner_tests;
mod validation_tests;

/// Every manifest under the repository's `manifests/` directory, as (path, text).
pub fn repo_manifests() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            if let Ok(text) = std::fs::read_to_string(&path) {
                out.push((path.display().to_string(), text));
            }
        }
    }
    out
}

/// The reference's example shape: a component with config and secrets, a provider linked to it
/// with source config, a spreadscaler with weighted spreads.
pub const EXAMPLE_YAML: &str = r#"
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: rust-hello-world
  annotations:
    version: v0.0.1
    description: "HTTP hello world"
  labels:
    team: edge
spec:
  policies:
    - name: nats-kv
      type: policy.secret.wasmcloud.dev/v1alpha1
      properties:
        backend: nats-kv
  components:
    - name: http-component
      type: component
      properties:
        image: ghcr.io/wasmcloud/components/http-hello-world-rust:0.1.0
        config:
          - name: greeting
            properties:
              text: hello
              port: 8080
          - name: existing-config
        secrets:
          - name: api-key
            properties:
              policy: nats-kv
              key: api_key
              field: value
      traits:
        - type: spreadscaler
          properties:
            replicas: 10
            spread:
              - name: east
                requirements:
                  zone: us-east-1
                weight: 80
              - name: west
                requirements:
                  zone: us-west-1
                weight: 20
    - name: httpserver
      type: capability
      properties:
        image: ghcr.io/wasmcloud/http-server:0.23.0
        id: http-server
      traits:
        - type: link
          properties:
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            target:
              name: http-component
              config:
                - name: target-cfg
                  properties:
                    mode: fast
            source:
              config:
                - name: default-http
                  properties:
                    address: 0.0.0.0:8000
        - type: daemonscaler
          properties:
            instances: 1
            spread:
              - name: edge
                requirements:
                  role: edge
"#;
