//! Unit tests of the model, validation and planner.

mod lattice_tests;
mod model_tests;
mod planner_tests;
mod validation_tests;

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
