//! Unit tests of the OCI pieces that need no registry (the end-to-end ones, against a real
//! registry, are in `integration/tests/oci_registry.rs`).

use std::collections::HashMap;

use oci_client::manifest::{OciDescriptor, OciImageManifest};

use super::artifact::{self, WASM_LAYER_MEDIA_TYPE};
use super::cache::sha256_digest;
use super::*;
use crate::runtime::{ComponentLoader, DefaultLoader};

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

#[test]
fn references_parse_and_floating_tags_are_refused() {
    let r = parse_reference("oci://127.0.0.1:5000/team/hello:1.0").unwrap();
    assert_eq!(r.registry(), "127.0.0.1:5000");
    assert_eq!(r.repository(), "team/hello");
    assert_eq!(r.tag(), Some("1.0"));
    check_floating_tag("127.0.0.1:5000/team/hello:1.0", &r, false).unwrap();

    let e = parse_reference("ghcr.io/Org/UPPER:1")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a valid OCI reference"), "{e}");

    for (text, what) in [
        ("ghcr.io/org/app", "has no tag"),
        ("ghcr.io/org/app:latest", ":latest"),
    ] {
        let r = parse_reference(text).unwrap();
        let e = check_floating_tag(text, &r, false).unwrap_err().to_string();
        assert!(e.contains(what) && e.contains("--allow-latest"), "{e}");
        check_floating_tag(text, &r, true).unwrap();
    }
    // A digest pins even a :latest ref.
    let pinned = format!("ghcr.io/org/app:latest@sha256:{}", "a".repeat(64));
    let r = parse_reference(&pinned).unwrap();
    check_floating_tag(&pinned, &r, false).unwrap();
    // A registry port is not a tag.
    let r = parse_reference("localhost:5000/app").unwrap();
    assert!(check_floating_tag("localhost:5000/app", &r, false).is_err());
}

#[test]
fn registries_normalize_and_mirrors_parse() {
    assert_eq!(
        normalize_registry("https://Index.Docker.io/v1/"),
        "docker.io"
    );
    assert_eq!(normalize_registry("127.0.0.1:5000"), "127.0.0.1:5000");
    assert_eq!(
        parse_mirror("ghcr.io=mirror.local:5000").unwrap(),
        ("ghcr.io".to_string(), "mirror.local:5000".to_string())
    );
    assert!(parse_mirror("ghcr.io").is_err());
    assert!(parse_mirror("ghcr.io=ghcr.io").is_err());
    assert_eq!(registry_env_suffix("127.0.0.1:5000"), "127_0_0_1_5000");
    assert_eq!(registry_env_suffix("ghcr.io"), "GHCR_IO");
}

#[test]
fn credentials_come_from_env_then_docker_config_and_never_show() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    // base64("dock:er-pass")
    std::fs::write(
        &config,
        r#"{"auths": {"http://127.0.0.1:5000": {"auth": "ZG9jazplci1wYXNz"},
                      "ghcr.io": {"username": "u", "password": "p"}}}"#,
    )
    .unwrap();
    let lookup = CredentialLookup {
        docker_config: Some(config.clone()),
    };
    let (creds, source) = lookup.lookup_with("127.0.0.1:5000", &env(&[])).unwrap();
    assert_eq!(
        creds,
        Credentials::Basic {
            username: "dock".into(),
            password: "er-pass".into()
        }
    );
    assert_eq!(source, CredentialSource::DockerConfig(config.clone()));
    let debug = format!("{creds:?}");
    assert!(
        !debug.contains("er-pass") && debug.contains("redacted"),
        "{debug}"
    );

    let vars = env(&[("TRELLIS_OCI_AUTH_127_0_0_1_5000", "envuser:pa:ss")]);
    let (creds, source) = lookup.lookup_with("127.0.0.1:5000", &vars).unwrap();
    assert_eq!(
        creds,
        Credentials::Basic {
            username: "envuser".into(),
            password: "pa:ss".into()
        }
    );
    assert_eq!(
        source.to_string(),
        "environment variable TRELLIS_OCI_AUTH_127_0_0_1_5000"
    );

    let vars = env(&[("TRELLIS_OCI_TOKEN_GHCR_IO", "tok")]);
    let (creds, _) = lookup.lookup_with("ghcr.io", &vars).unwrap();
    assert_eq!(creds, Credentials::Bearer("tok".into()));
    assert_eq!(format!("{creds:?}"), "Bearer(<redacted>)");

    let vars = env(&[
        ("WASMCLOUD_OCI_REGISTRY", "registry.internal:5000"),
        ("WASMCLOUD_OCI_REGISTRY_USER", "w"),
        ("WASMCLOUD_OCI_REGISTRY_PASSWORD", "c"),
    ]);
    assert!(lookup
        .lookup_with("registry.internal:5000", &vars)
        .is_some());
    assert!(lookup.lookup_with("other.example:5000", &vars).is_none());

    // A broken Docker config is ignored, not fatal.
    std::fs::write(&config, "not json").unwrap();
    assert!(lookup.lookup_with("ghcr.io", &env(&[])).is_none());
}

#[test]
fn the_cache_checks_digests_and_evicts_the_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::new(dir.path().to_path_buf(), 250);
    let blobs: Vec<Vec<u8>> = (0u8..3).map(|i| vec![i; 100]).collect();
    let digests: Vec<String> = blobs.iter().map(|b| sha256_digest(b)).collect();
    assert!(
        cache.put_blob(&digests[0], &blobs[1]).is_err(),
        "wrong digest refused"
    );
    cache.put_blob(&digests[0], &blobs[0]).unwrap();
    cache.put_blob(&digests[1], &blobs[1]).unwrap();
    // Mark the first as used more recently than the second.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    let path = |d: &str| {
        dir.path()
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    std::fs::File::options()
        .append(true)
        .open(path(&digests[1]))
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_eq!(cache.blob(&digests[0], 1000).unwrap(), blobs[0]);
    // Over the bound: the least recently used (the second) goes.
    cache.put_blob(&digests[2], &blobs[2]).unwrap();
    assert!(cache.blob(&digests[1], 1000).is_none());
    assert!(cache.blob(&digests[0], 1000).is_some());
    assert!(cache.blob(&digests[2], 1000).is_some());
    assert!(cache.blob_bytes() <= 250);

    // A tampered entry is a miss, and is deleted.
    std::fs::write(path(&digests[0]), vec![9u8; 100]).unwrap();
    assert!(cache.blob(&digests[0], 1000).is_none());
    assert!(!path(&digests[0]).exists());
    // Refused digests never become paths.
    assert!(cache.put_blob("sha256:../../etc", b"x").is_err());

    cache
        .put_tag("127.0.0.1:5000/hello:1.0", &digests[2])
        .unwrap();
    let record = cache.tag("127.0.0.1:5000/hello:1.0").unwrap();
    assert_eq!(record.digest, digests[2]);
    assert!(record.age() < std::time::Duration::from_secs(60));
    assert!(cache.tag("127.0.0.1:5000/hello:2.0").is_none());
}

fn layer(media_type: &str, byte: u8) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.into(),
        digest: sha256_digest(&[byte]),
        size: 1,
        ..Default::default()
    }
}

#[test]
fn one_wasm_layer_is_picked_and_others_refused() {
    let mut manifest = OciImageManifest {
        layers: vec![layer(WASM_LAYER_MEDIA_TYPE, 1)],
        ..Default::default()
    };
    assert_eq!(
        artifact::wasm_layer(&manifest).unwrap().media_type,
        "application/wasm"
    );
    manifest.layers = vec![layer(artifact::LEGACY_WASM_LAYER_MEDIA_TYPE, 1)];
    assert!(artifact::wasm_layer(&manifest).is_ok());

    manifest.layers = vec![
        layer(WASM_LAYER_MEDIA_TYPE, 1),
        layer(WASM_LAYER_MEDIA_TYPE, 2),
    ];
    let e = artifact::wasm_layer(&manifest).unwrap_err().to_string();
    assert!(
        e.contains("2 wasm layers") && e.contains("exactly one"),
        "{e}"
    );

    manifest.layers = vec![layer("application/vnd.oci.image.layer.v1.tar+gzip", 1)];
    let e = artifact::wasm_layer(&manifest).unwrap_err().to_string();
    assert!(e.contains("no wasm layer") && e.contains("tar+gzip"), "{e}");

    manifest.layers = vec![layer(artifact::PROVIDER_ARCHIVE_MEDIA_TYPE, 1)];
    let e = artifact::wasm_layer(&manifest).unwrap_err().to_string();
    assert!(e.contains("provider archive"), "{e}");

    let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    let e = artifact::parse_manifest(index).unwrap_err().to_string();
    assert!(e.contains("image index"), "{e}");
}

#[test]
fn wasm_info_reads_kind_and_refuses_garbage() {
    let component = b"\0asm\x0d\0\x01\0";
    let info = artifact::wasm_info(component).unwrap();
    assert_eq!(info.kind, "component");
    assert!(info.imports.is_empty() && info.claims.is_none());
    let module = b"\0asm\x01\0\0\0";
    assert_eq!(artifact::wasm_info(module).unwrap().kind, "module");
    assert!(artifact::wasm_info(b"not wasm").is_err());
}

#[tokio::test]
async fn the_loader_refuses_floating_tags_and_serves_pinned_digests_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let loader = OciLoader::new(
        &OciConfig::default(),
        DefaultLoader::default(),
        dir.path().to_path_buf(),
    )
    .unwrap();
    let e = format!(
        "{:#}",
        loader.load("127.0.0.1:9/app:latest").await.unwrap_err()
    );
    assert!(e.contains("--allow-latest"), "{e}");

    // Seed the cache as a pull would, then load by digest: no registry is running on port 9,
    // so this only works from the cache.
    let wasm = b"\0asm\x0d\0\x01\0".to_vec();
    let layer_digest = sha256_digest(&wasm);
    let manifest = OciImageManifest {
        layers: vec![OciDescriptor {
            media_type: WASM_LAYER_MEDIA_TYPE.into(),
            digest: layer_digest.clone(),
            size: wasm.len() as i64,
            ..Default::default()
        }],
        ..Default::default()
    };
    let raw = serde_json::to_vec(&manifest).unwrap();
    let digest = sha256_digest(&raw);
    loader.cache().put_blob(&layer_digest, &wasm).unwrap();
    loader.cache().put_manifest(&digest, &raw).unwrap();
    let bytes = loader
        .load(&format!("127.0.0.1:9/app@{digest}"))
        .await
        .unwrap();
    assert_eq!(bytes, wasm);

    // A tag ref: the registry is down, the cached resolution is used.
    loader
        .cache()
        .put_tag("127.0.0.1:9/app:1.0", &digest)
        .unwrap();
    let bytes = loader.load("127.0.0.1:9/app:1.0").await.unwrap();
    assert_eq!(bytes, wasm);
    // Without one, the error names the registry and suggests --allowed-insecure.
    let e = format!(
        "{:#}",
        loader.load("127.0.0.1:9/app:2.0").await.unwrap_err()
    );
    assert!(
        e.contains("registry 127.0.0.1:9")
            && e.contains("--allowed-insecure")
            && e.contains("no cached copy"),
        "{e}"
    );
    // File refs still go to the file loader.
    let e = format!("{:#}", loader.load("file:///x.wasm").await.unwrap_err());
    assert!(e.contains("--allow-file-load"), "{e}");
}

#[test]
fn docker_credential_helpers_are_run_for_their_registries() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let helper = bin.join("docker-credential-fake");
    std::fs::write(
        &helper,
        "#!/bin/sh\nserver=$(cat)\n[ \"$1\" = get ] || exit 2\n\
         [ \"$server\" = 127.0.0.1:5000 ] || { echo 'credentials not found' >&2; exit 1; }\n\
         printf '{\"ServerURL\":\"%s\",\"Username\":\"helped\",\"Secret\":\"from-helper\"}' \"$server\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        r#"{"credsStore": "fake", "auths": {"ghcr.io": {"auth": "dTpw"}}}"#,
    )
    .unwrap();
    let lookup = CredentialLookup {
        docker_config: Some(config.clone()),
    };
    let path = bin.display().to_string();
    let vars = env(&[("PATH", path.as_str())]);
    let (creds, source) = lookup.lookup_with("127.0.0.1:5000", &vars).unwrap();
    assert_eq!(
        creds,
        Credentials::Basic {
            username: "helped".into(),
            password: "from-helper".into()
        }
    );
    assert_eq!(
        source.to_string(),
        "the Docker credential helper docker-credential-fake"
    );
    // The helper has nothing for ghcr.io: the inline `auths` entry (base64 "u:p") is used.
    let (creds, source) = lookup.lookup_with("ghcr.io", &vars).unwrap();
    assert_eq!(
        creds,
        Credentials::Basic {
            username: "u".into(),
            password: "p".into()
        }
    );
    assert_eq!(source, CredentialSource::DockerConfig(config.clone()));
    // A helper that is not installed is skipped.
    assert!(lookup.lookup_with("127.0.0.1:5000", &env(&[])).is_none());
}

#[test]
fn embedded_claims_are_decoded_from_the_jwt_section() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let jwt = format!(
        "{}.{}.c2ln",
        b64(r#"{"typ":"jwt","alg":"Ed25519"}"#),
        b64(r#"{"iss":"AISSUER","sub":"MSUBJECT","wascap":{"name":"hello"}}"#)
    );
    let mut payload = vec![3u8];
    payload.extend_from_slice(b"jwt");
    payload.extend_from_slice(jwt.as_bytes());
    let mut wasm = b"\0asm\x0d\0\x01\0".to_vec();
    wasm.push(0);
    // The section size as unsigned LEB128.
    let mut size = payload.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            wasm.push(byte);
            break;
        }
        wasm.push(byte | 0x80);
    }
    wasm.extend_from_slice(&payload);
    let info = artifact::wasm_info(&wasm).unwrap();
    let claims = info.claims.expect("claims");
    assert_eq!(claims["sub"], "MSUBJECT");
    assert_eq!(claims["wascap"]["name"], "hello");
}

#[test]
fn credentials_put_at_run_time_win() {
    let lookup = CredentialLookup::default();
    let vars = env(&[("TRELLIS_OCI_AUTH_PUT_EXAMPLE_5000", "env:user")]);
    put_registry_credentials(
        "https://Put.Example:5000/v2/",
        Credentials::Bearer("t0ken".into()),
    );
    let (creds, source) = lookup.lookup_with("put.example:5000", &vars).unwrap();
    assert_eq!(creds, Credentials::Bearer("t0ken".into()));
    assert_eq!(source.to_string(), "the registry.put control request");
}
